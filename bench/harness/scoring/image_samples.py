"""Sample-based scoring of image runs, the same for every method: n generated images (with
the evaluation weights, in fp32), the sampler's network evaluations per image batch, a
samples grid PNG, and FID and KID against the Inception features of a named split
(`bench.science.fid`, torch-fidelity's definition; reference features cached by a hash of
the images). Where FID cannot be computed the run records why (``fid.unavailable``), never
a number.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from bench.api import BenchError, Method, SampleEval, Scores, Splits
from bench.harness.scoring.cost import forward_calls, synchronize

__all__ = ["generate", "image_scores", "fid_cache_dir", "SAMPLE_CHUNK"]

log = logging.getLogger(__name__)

#: generated images per call of ``method.sample`` (memory bound on the device)
SAMPLE_CHUNK = 250


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
    """Generate ``cfg.n_samples("image")`` images (at least the grid's), write the grid PNG
    and measure FID/KID with their labels. Call with the evaluation weights in place."""
    from bench.data.imageset import to_uint8, write_grid_png

    out = Scores()
    n_fid = cfg.n_samples("image")
    n = max(n_fid, cfg.grid)
    if n == 0:
        return out
    synchronize(device)
    t0 = time.perf_counter()
    samples, nfe = generate(method, n)
    synchronize(device)
    seconds = time.perf_counter() - t0
    images = to_uint8(samples)
    out.metrics.update({"sample_seconds": seconds, "sample_nfe": nfe,
                        "samples_per_second": n / seconds if seconds > 0 else math.nan})
    if cfg.grid:
        nrow = max(1, int(math.sqrt(cfg.grid)))
        out.artifacts["samples.png"] = write_grid_png(images[:cfg.grid], work / "samples.png",
                                                      nrow=nrow)
        out.tags["samples_png"] = f"{min(cfg.grid, n)} samples, {title}"
    if n_fid >= 2:
        metrics, tags = _fid(images[:n_fid], nfe, splits, cfg, device, data_dir)
        out.metrics.update(metrics)
        out.tags.update(tags)
    return out


def _fid(images, nfe: float, splits: Splits, cfg: SampleEval, device: str,
         data_dir: Path | None) -> tuple[dict[str, float], dict[str, str]]:
    from bench.data.imageset import to_uint8
    from bench.science import fid

    ref_split = getattr(splits, cfg.reference)
    rows = ref_split.shape[0] if cfg.reference_rows is None else min(cfg.reference_rows,
                                                                      ref_split.shape[0])
    ref_name = splits.split_names.get(cfg.reference, cfg.reference)
    if rows < ref_split.shape[0]:
        ref_name += f", first {rows} images"
    try:
        extractor = fid.InceptionFeatures(fid.find_inception(data_dir), device=device)
        t0 = time.perf_counter()
        res = fid.fid_kid(images, to_uint8(ref_split[:rows]), extractor, fid_cache_dir(),
                          kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size)
    except BenchError as exc:  # no network / file: say why, never a number
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("FID not computed: %s", reason)
        return {}, {"fid.unavailable": reason}
    metrics = {"fid": res["fid"], "kid": res["kid"], "kid_std": res["kid_std"],
               "fid_n_samples": float(res["n_gen"]), "fid_n_reference": float(res["n_ref"]),
               "fid_sampler_nfe": nfe, "kid_subset_size": float(res["kid_subset_size"]),
               "fid_seconds": time.perf_counter() - t0}
    tags = {"fid.reference": f"{cfg.reference} split: {ref_name}",
            "fid.feature_extractor": str(res["feature_extractor"]),
            "fid.estimator": (f"FID of {res['n_gen']} generated vs {res['n_ref']} reference "
                              "images (biased upward at small n; papers use 50000); KID "
                              f"unbiased, {res['kid_subsets']} subsets of "
                              f"{res['kid_subset_size']}"),
            "fid.dequantization": "generated images rounded to the 8-bit grid"}
    return metrics, tags
