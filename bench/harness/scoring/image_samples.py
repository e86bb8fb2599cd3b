"""Sample-based scoring of image runs, the same for every method: n generated images (with
the evaluation weights, in fp32), the sampler's network evaluations per image batch, a
samples grid PNG, FID and KID against the Inception features of a named split
(`bench.science.fid`, torch-fidelity's definition, with the resize a labelled choice), and
precision/recall, density/coverage and the memorisation check
(`bench.science.image_quality`). Images are generated and featurised chunk by chunk: FID
comes from streamed float64 statistics (`bench.science.fid_stats`), so no 50k x 2048 feature
matrix is held; KID and the feature metrics use the first `FEATURE_ROWS` features of each
set. Reference statistics and the training images' features are cached by a hash of the
images. Where FID cannot be computed the run records why (``fid.unavailable``), never a
number.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.api import BenchError, Method, SampleEval, Scores, Splits
from bench.harness.scoring.cost import forward_calls, synchronize

__all__ = ["generate", "image_scores", "fid_cache_dir", "SAMPLE_CHUNK", "FEATURE_ROWS",
           "TRAIN_ROWS"]

log = logging.getLogger(__name__)

#: generated images per call of ``method.sample`` (memory bound on the device)
SAMPLE_CHUNK = 250
#: features kept per set for KID and the feature metrics (the first rows; FID uses all)
FEATURE_ROWS = 10000
#: training images of the memorisation check when ``SampleEval.train_rows`` is None (at
#: most as many as the reference images)
TRAIN_ROWS = 5000


def fid_cache_dir() -> Path:
    """``BENCH_CACHE_DIR``/fid, else ``~/.cache/bench/fid`` (never inside the data root,
    which may be read-only or shared)."""
    env = os.environ.get("BENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "fid"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bench" / "fid"


def generate(method: Method, n: int, chunk: int = SAMPLE_CHUNK) -> tuple[torch.Tensor, float]:
    """n samples (n, *event_shape) on the CPU, and the sampler's network evaluations per
    call (the mean over chunks of the forward calls of ``method.modules()``, counted with
    forward hooks (`bench.harness.scoring.cost.forward_calls`), so it is the same count for
    an ODE, an SDE or an ancestral sampler)."""
    modules = list(method.modules().values())
    for m in modules:
        m.eval()
    out, chunks = [], 0
    with forward_calls(modules) as calls, torch.no_grad():
        for start in range(0, n, chunk):
            out.append(method.sample(min(chunk, n - start)).detach().float().cpu())
            chunks += 1
    return torch.cat(out), calls[0] / max(chunks, 1)


def image_scores(method: Method, splits: Splits, cfg: SampleEval, work: Path, device: str,
                 data_dir: Path | None, title: str) -> Scores:
    """Generate ``cfg.n_samples("image")`` images (at least the grid's) in chunks, write the
    grid PNG and measure FID/KID and the feature metrics with their labels. Call with the
    evaluation weights in place."""
    from bench.data.imageset import write_grid_png
    from bench.science.fid_resize import get_resize

    out = Scores()
    n_fid = cfg.n_samples("image")
    n = max(n_fid, cfg.grid)
    if n == 0:
        return out
    sink, why = _sink(cfg, n_fid, device, data_dir) if n_fid >= 2 else (None, "")
    grid, seconds, nfe = _sample_stream(method, n, device, cfg.grid, sink)
    out.metrics.update({"sample_seconds": seconds, "sample_nfe": nfe,
                        "samples_per_second": n / seconds if seconds > 0 else math.nan})
    if grid is not None:
        nrow = max(1, int(math.sqrt(cfg.grid)))
        out.artifacts["samples.png"] = write_grid_png(grid, work / "samples.png", nrow=nrow)
        out.tags["samples_png"] = f"{min(cfg.grid, n)} samples, {title}"
    if n_fid < 2:
        return out
    resize = get_resize(cfg.resize)
    out.tags["fid.resize"] = f"{resize.name} ({resize.rule}): {resize.description}"
    if sink is not None:
        try:
            metrics, tags, f_ref = _fid(sink, nfe, splits, cfg)
            metrics_q, tags_q = _quality(sink.features(), f_ref, sink.extractor, splits, cfg,
                                         int(metrics["fid_n_reference"]))
            out.metrics.update({**metrics, **metrics_q})
            out.tags.update({**tags, **tags_q})
            return out
        except BenchError as exc:
            why = _reason(exc)
    log.warning("FID not computed: %s", why)
    out.tags["fid.unavailable"] = why
    return out


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Features:
    """Inception features of the first ``n`` generated images, chunk by chunk: their
    `FeatureStats`, the first `FEATURE_ROWS` rows, and the seconds spent."""

    def __init__(self, extractor, n: int) -> None:
        from bench.science.fid_stats import FeatureStats

        self.extractor, self.n, self.seen, self.seconds = extractor, n, 0, 0.0
        self.stats, self.kept = FeatureStats(extractor.dim), []

    def add(self, images: np.ndarray) -> None:
        images = images[:self.n - self.seen]
        if len(images) == 0:
            return
        t0 = time.perf_counter()
        f = self.extractor(images)
        self.stats.add(f)
        take = max(0, min(len(f), FEATURE_ROWS - self.seen))
        if take:
            self.kept.append(f[:take])
        self.seen += len(f)
        self.seconds += time.perf_counter() - t0

    def features(self) -> np.ndarray:
        return np.concatenate(self.kept)


def _sink(cfg: SampleEval, n_fid: int, device: str, data_dir: Path | None
          ) -> tuple[_Features | None, str]:
    from bench.science import fid

    try:
        extractor = fid.InceptionFeatures(fid.find_inception(data_dir), device=device,
                                          resize=cfg.resize)
    except BenchError as exc:  # no network / file: say why, never a number
        return None, _reason(exc)
    return _Features(extractor, n_fid), ""


def _sample_stream(method: Method, n: int, device: str, grid_n: int, sink: _Features | None
                   ) -> tuple[np.ndarray | None, float, float]:
    """Draw n images in chunks of `SAMPLE_CHUNK`; each chunk goes to ``sink`` (its
    features) and the first ``grid_n`` images are kept for the grid. Returns (grid images,
    sampling seconds (features excluded), network evaluations per sampling call)."""
    from bench.data.imageset import to_uint8

    modules = list(method.modules().values())
    for m in modules:
        m.eval()
    grid, seconds, chunks = [], 0.0, 0
    with forward_calls(modules) as calls, torch.no_grad():
        for start in range(0, n, SAMPLE_CHUNK):
            synchronize(device)
            t0 = time.perf_counter()
            x = method.sample(min(SAMPLE_CHUNK, n - start)).detach()
            synchronize(device)
            seconds += time.perf_counter() - t0
            chunks += 1
            images = to_uint8(x)
            if start < grid_n:
                grid.append(images[:grid_n - start])
            if sink is not None:
                sink.add(images)
    return (np.concatenate(grid) if grid else None), seconds, calls[0] / max(chunks, 1)


def _fid(sink: _Features, nfe: float, splits: Splits, cfg: SampleEval
         ) -> tuple[dict[str, float], dict[str, str], np.ndarray]:
    """FID (every image; from the features when all are kept, else from the streamed
    statistics: the same number) and KID (the kept features) against the reference split."""
    from bench.data.imageset import to_uint8
    from bench.science import fid
    from bench.science.fid_stats import cached_stats, fid_from_stats

    ref_split = getattr(splits, cfg.reference)
    rows = ref_split.shape[0] if cfg.reference_rows is None else min(cfg.reference_rows,
                                                                      ref_split.shape[0])
    ref_name = splits.split_names.get(cfg.reference, cfg.reference)
    if rows < ref_split.shape[0]:
        ref_name += f", first {rows} images"
    t0 = time.perf_counter()
    ref_stats, f_ref = cached_stats(to_uint8(ref_split[:rows]), sink.extractor,
                                    fid_cache_dir(), FEATURE_ROWS)
    f_gen, n_gen = sink.features(), sink.seen
    whole = len(f_gen) == n_gen and len(f_ref) == rows
    value = fid.fid_from_features(f_gen, f_ref) if whole else fid_from_stats(sink.stats,
                                                                             ref_stats)
    m = min(cfg.kid_subset_size, len(f_gen), len(f_ref))
    k_mean, k_std = fid.kid(f_gen, f_ref, cfg.kid_subsets, m)
    metrics = {"fid": value, "kid": k_mean, "kid_std": k_std, "fid_n_samples": float(n_gen),
               "fid_n_reference": float(rows), "fid_sampler_nfe": nfe,
               "kid_subset_size": float(m),
               "fid_seconds": sink.seconds + time.perf_counter() - t0}
    kept = ("" if whole else
            f" on the first {len(f_gen)} generated / {len(f_ref)} reference features")
    route = "from the features" if whole else "from streamed float64 statistics"
    tags = {"fid.reference": f"{cfg.reference} split: {ref_name}",
            "fid.feature_extractor": sink.extractor.id,
            "fid.estimator": (f"FID of {n_gen} generated vs {rows} reference images "
                              f"({route}; biased upward at small n; papers use 50000); "
                              f"KID unbiased, {cfg.kid_subsets} subsets of {m}{kept}"),
            "fid.dequantization": "generated images rounded to the 8-bit grid"}
    return metrics, tags, f_ref


def _quality(f_gen: np.ndarray, f_ref: np.ndarray, extractor, splits: Splits,
             cfg: SampleEval, n_ref: int) -> tuple[dict[str, float], dict[str, str]]:
    """Precision/recall, density/coverage and the memorisation check
    (`bench.science.image_quality.feature_metrics`) on the kept features, the training
    split's first ``cfg.train_rows`` images (None: min(`TRAIN_ROWS`, ``n_ref``)) as the
    training set (features cached); where they cannot be computed, a tag says why."""
    from bench.data.imageset import to_uint8
    from bench.science.fid import reference_features
    from bench.science.image_quality import feature_metrics

    t0 = time.perf_counter()
    f_train, skipped, train_label = None, "", ""
    want = min(TRAIN_ROWS, n_ref) if cfg.train_rows is None else cfg.train_rows
    rows = min(want, splits.train.shape[0])
    if cfg.reference == "train":
        skipped = "the reference is the train split: no held-out set"
    elif rows < 2:
        skipped = "--fid-train-rows 0"
    else:
        train_label = f"train split, first {rows} images"
        f_train = reference_features(to_uint8(splits.train[:rows]), extractor,
                                     fid_cache_dir())
    try:
        metrics, tags = feature_metrics(f_gen, f_ref, f_train,
                                        ref_label=f"{cfg.reference} split",
                                        train_label=train_label or "train")
    except BenchError as exc:  # too few features for the k-NN radii: say why
        return {}, {"quality.unavailable": _reason(exc)}
    if skipped:
        tags["memorisation.skipped"] = skipped
    elif "memorisation_ratio" in metrics:
        metrics["fid_n_train"] = float(rows)
    metrics["quality_seconds"] = time.perf_counter() - t0
    return metrics, tags
