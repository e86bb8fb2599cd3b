"""``bench fid A B``: FID and KID between two image sets (.npz/.npy arrays or folders of
PNG/JPEG files), torch-fidelity's definitions (`bench.science.fid`), so a user can hold the
harness's numbers against their own pipeline. A is the generated set, B the reference (its
features are cached under ``--cache-dir`` when given).

Registered in `bench.cli.main` with ``main.add_command(fid)``. Bad input raises `ConfigError`
(exit 2) or `DataError` (exit 1), one line each; torch loads inside the command.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from bench.api.errors import ConfigError

__all__ = ["fid"]

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
              help="Cache B's features here (keyed by a hash of the images).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
def fid(set_a, set_b, inception, data_dir, batch_size, device, kid_subsets, kid_subset_size,
        seed, cache_dir, as_json):
    """FID and KID between image sets A (generated) and B (reference)."""
    _positive("--batch-size", batch_size)
    _positive("--kid-subsets", kid_subsets)
    _positive("--kid-subset-size", kid_subset_size, 2)
    from bench.data.imageset import read_image_set
    from bench.science import fid as science

    a, b = read_image_set(set_a), read_image_set(set_b)
    if a.shape[2:] != b.shape[2:]:
        log.warning("A is %sx%s, B is %sx%s: both are resized to 299x299",
                    *a.shape[2:], *b.shape[2:])
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from exc
    extractor = science.InceptionFeatures(inception, data_dir=data_dir, batch_size=batch_size,
                                          device=device)
    t0 = time.perf_counter()
    res = science.fid_kid(a, b, extractor, cache_dir, kid_subsets=kid_subsets,
                          kid_subset_size=kid_subset_size, seed=seed)
    res.update({"a": str(set_a), "b": str(set_b), "a_shape": list(a.shape[1:]),
                "b_shape": list(b.shape[1:]), "device": device,
                "inception": str(extractor.path), "seconds": time.perf_counter() - t0})
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return
    click.echo(f"FID {res['fid']:.4f}  (A: {res['n_gen']} images {a.shape[1:]} from {set_a}; "
               f"B: {res['n_ref']} images {b.shape[1:]} from {set_b})")
    click.echo(f"KID {res['kid']:.6f} +- {res['kid_std']:.6f}  ({res['kid_subsets']} subsets "
               f"of {res['kid_subset_size']}, seed {res['kid_seed']}; unbiased MMD^2, "
               "polynomial kernel (x.y/d + 1)^3)")
    click.echo(f"features: {res['feature_extractor']} on {device} ({res['seconds']:.1f} s)")
