"""``bench fid A B``: FID and KID between two image sets (.npz/.npy arrays or folders of
PNG/JPEG files), torch-fidelity's definitions (`bench.science.fid`), so a user can hold the
harness's numbers against their own pipeline. A is the generated set, B the reference (its
statistics are cached under ``--cache-dir`` when given) or a statistics file written by
``--save-stats``. FID uses every image through streamed float64 statistics (no feature matrix
is kept; `bench.science.fid_stats`), KID the first ``--max-feature-rows`` features; the
resize (``--resize tf1|clean``) is printed with the result. Under torchrun
(``torchrun --nproc-per-node 2 -m bench.cli.main fid A B``) each rank takes a contiguous
shard of A and B, one all-reduce sums the statistics, and rank 0 prints.

Registered in `bench.cli.main` with ``main.add_command(fid)``. Bad input raises `ConfigError`
(exit 2) or `DataError` (exit 1), one line each; torch loads inside the command.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from bench.api.errors import ConfigError, DataError

__all__ = ["fid", "measure"]

log = logging.getLogger(__name__)


def _positive(name: str, value: int, least: int = 1) -> None:
    if value < least:
        raise ConfigError(f"{name} must be >= {least}, got {value}")


@click.command("fid")
@click.argument("set_a", metavar="A")
@click.argument("set_b", metavar="B")
@click.option("--inception", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The TorchScript FID Inception file (default: <data dir>/fid/"
                   "inception-2015-12-05-torchscript.pt).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root searched for fid/ (default: BENCH_DATA_DIR).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Images per Inception forward pass.")
@click.option("--device", default="auto", show_default=True,
              help="torch device; auto = cuda when available, else cpu.")
@click.option("--kid-subsets", type=int, default=100, show_default=True)
@click.option("--kid-subset-size", type=int, default=1000, show_default=True,
              help="Clipped to the smaller set.")
@click.option("--seed", type=int, default=2020, show_default=True,
              help="KID subset seed (torch-fidelity's default).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache B's statistics and kept features here (keyed by a hash of the "
                   "images; single process only).")
@click.option("--resize", default="tf1", show_default=True,
              help="The resize to 299 x 299: tf1 (TF1 bilinear, the published FIDs) or clean "
                   "(clean-fid's PIL bicubic).")
@click.option("--save-stats", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write B's FID statistics (mu, sigma, n, network SHA-256, resize) to this "
                   ".npz; such a file may then be given as B.")
@click.option("--max-feature-rows", type=int, default=10000, show_default=True,
              help="Features kept per set for KID: the first N rows (FID uses every image, "
                   "through streamed statistics).")
@click.option("--train", "set_train", default=None, metavar="SET",
              help="The training images of the model that made A: the memorisation check "
                   "compares A's nearest-training-image distances with B's (B held out).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
def fid(set_a, set_b, inception, data_dir, batch_size, device, kid_subsets, kid_subset_size,
        seed, cache_dir, resize, save_stats, max_feature_rows, set_train, as_json):
    """FID and KID between image sets A (generated) and B (reference, or a statistics file
    written by --save-stats: then FID only). Under torchrun each rank takes a contiguous
    shard of A and B and rank 0 prints."""
    _positive("--batch-size", batch_size)
    _positive("--kid-subsets", kid_subsets)
    _positive("--kid-subset-size", kid_subset_size, 2)
    _positive("--max-feature-rows", max_feature_rows, 2)
    from bench.data.imageset import read_image_set
    from bench.science import fid_stats
    from bench.science.fid_resize import get_resize

    get_resize(resize)
    b_is_stats = fid_stats.is_stats_file(set_b)
    if b_is_stats and save_stats is not None:
        raise ConfigError(f"--save-stats: B ({set_b}) is already a statistics file")
    a = read_image_set(set_a)
    b = None if b_is_stats else read_image_set(set_b)
    train = read_image_set(set_train) if set_train is not None else None
    if b is not None and a.shape[2:] != b.shape[2:]:
        log.warning("A is %sx%s, B is %sx%s: both are resized to 299x299",
                    *a.shape[2:], *b.shape[2:])
    rank, device, extractor = _extractor(inception, data_dir, batch_size, device, resize)
    b_stats = fid_stats.load_stats(set_b, extractor) if b_is_stats else None
    t0 = time.perf_counter()
    res, stats_b = measure(a, b, b_stats, extractor, max_rows=max_feature_rows,
                           kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
                           cache_dir=cache_dir, train=train)
    if rank != 0:
        return
    if save_stats is not None:
        res["saved_stats"] = str(fid_stats.save_stats(save_stats, stats_b, extractor))
    res.update({"a": str(set_a), "b": str(set_b), "a_shape": list(a.shape[1:]),
                "b_shape": list(b.shape[1:]) if b is not None else None, "device": device,
                "inception": str(extractor.path), "seconds": time.perf_counter() - t0})
    _print(res, as_json)


def _extractor(inception, data_dir, batch_size: int, device: str, resize: str):
    """(rank, this rank's device, the Inception extractor); under torchrun the process
    group is set up here (gloo on the CPU, NCCL on CUDA)."""
    import torch

    from bench.harness.training.distributed import setup
    from bench.science import fid as science

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from exc
    world, device = setup(device)
    extractor = science.InceptionFeatures(inception, data_dir=data_dir, batch_size=batch_size,
                                          device=device, resize=resize)
    return world.rank, device, extractor


def measure(a, b, b_stats, extractor, *, max_rows: int = 10000, kid_subsets: int = 100,
            kid_subset_size: int = 1000, seed: int = 2020, cache_dir: Path | None = None,
            train=None):
    """FID (every image, from streamed `FeatureStats`; sharded over the ranks of an
    initialised process group) and KID (the first ``max_rows`` features of each set) of
    uint8 sets ``a`` and ``b``, or of ``a`` and loaded statistics ``b_stats`` (then KID is
    not available, and says why). With every feature kept, FID comes from the features
    (`fid_from_features`: the same number, exact where covariances are rank-deficient).
    Precision/recall, density/coverage and, with ``train`` images, the memorisation check
    (`bench.science.image_quality`) use the same kept features.

    Returns:
        (result dict, B's statistics). Every rank returns the same.
    """
    from bench.science import fid as science
    from bench.science import fid_stats

    sa, fa = fid_stats.sharded_features(a, extractor, max_rows)
    if b_stats is not None:
        sb, fb = b_stats, None
    elif cache_dir is not None and fid_stats.rank_world()[1] == 1:
        sb, fb = fid_stats.cached_stats(b, extractor, cache_dir, max_rows)
    else:
        sb, fb = fid_stats.sharded_features(b, extractor, max_rows)
    n_a, n_b = int(sa.n), int(sb.n)
    if n_a < 2 or n_b < 2:
        raise DataError(f"FID needs at least 2 images per set, got {n_a} and {n_b}")
    whole = fb is not None and len(fa) == n_a and len(fb) == n_b
    res = {"fid": science.fid_from_features(fa, fb) if whole else
           fid_stats.fid_from_stats(sa, sb), "n_gen": n_a, "n_ref": n_b,
           "fid_from": "features" if whole else "streamed statistics",
           "resize": extractor.resize, "feature_extractor": extractor.id,
           "kid_subsets": int(kid_subsets), "kid_seed": int(seed)}
    if fb is None:
        res.update({"kid": None, "kid_std": None, "kid_subset_size": None,
                    "kid_unavailable": "B is a statistics file: KID needs features"})
        res["quality_unavailable"] = "B is a statistics file: these need features"
        return res, sb
    m = min(int(kid_subset_size), len(fa), len(fb))
    res["kid"], res["kid_std"] = science.kid(fa, fb, kid_subsets, m, seed)
    res.update({"kid_subset_size": m, "kid_rows": [len(fa), len(fb)]})
    res.update(_quality(fa, fb, train, extractor, max_rows))
    return res, sb


def _quality(fa, fb, train, extractor, max_rows: int) -> dict:
    """Precision, recall, density, coverage (and memorisation against ``train``) of the
    kept features, with their labels (``labels``)."""
    from bench.science import fid_stats
    from bench.science.image_quality import feature_metrics

    ft = fid_stats.sharded_features(train, extractor, max_rows)[1] if train is not None else None
    metrics, labels = feature_metrics(fa, fb, ft, ref_label="B", train_label="--train",
                                      skipped="no --train images given")
    return {**metrics, "labels": labels}


def _print(res: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return
    b_desc = (f"{res['n_ref']} images {tuple(res['b_shape'])}" if res["b_shape"] else
              f"statistics of {res['n_ref']} images")
    click.echo(f"FID {res['fid']:.4f}  (A: {res['n_gen']} images {tuple(res['a_shape'])} "
               f"from {res['a']}; B: {b_desc} from {res['b']})")
    if res["kid"] is None:
        click.echo(f"KID not available: {res['kid_unavailable']}")
    else:
        rows = res["kid_rows"]
        capped = (f"; on the first {rows[0]} / {rows[1]} features" if
                  rows != [res["n_gen"], res["n_ref"]] else "")
        click.echo(f"KID {res['kid']:.6f} +- {res['kid_std']:.6f}  ({res['kid_subsets']} "
                   f"subsets of {res['kid_subset_size']}, seed {res['kid_seed']}; unbiased "
                   f"MMD^2, polynomial kernel (x.y/d + 1)^3{capped})")
    if "precision" in res:
        click.echo(f"precision {res['precision']:.4f}  recall {res['recall']:.4f}  density "
                   f"{res['density']:.4f}  coverage {res['coverage']:.4f}  "
                   f"({res['labels']['quality.estimator']})")
        mem = res["labels"].get("memorisation.verdict")
        click.echo(f"memorisation: ratio {res['memorisation_ratio']:.4f}, {mem}" if mem else
                   f"memorisation: not checked ({res['labels']['memorisation.skipped']})")
    elif "labels" in res:
        click.echo(f"precision/recall not computed: {res['labels']['quality.skipped']}")
    click.echo(f"features: {res['feature_extractor']} on {res['device']}, resize "
               f"{res['resize']} ({res['seconds']:.1f} s)")
    if res.get("saved_stats"):
        click.echo(f"B's statistics written to {res['saved_stats']}")
