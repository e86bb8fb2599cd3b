"""The specs of the built-in scorers' metrics (`bench.harness.scoring.scorers`): what every
number bench records means. Tables and reports fall back on them for records written
before specs travelled with the runs.

>>> BUILTIN_SPECS["test_nll"].unit, BUILTIN_SPECS["fid"].better
('nats', 'lower')
"""

from __future__ import annotations

from collections.abc import Iterable

from bench.api.records import RunRecord
from bench.api.scoring import MetricSpec, specs_from_tags

__all__ = ["LIKELIHOOD_SPECS", "VECTOR_SAMPLE_SPECS", "IMAGE_QUALITY_SPECS", "IMAGE_SAMPLE_SPECS",
           "SAMPLING_SPECS", "TRAINING_SPECS", "BUILTIN_SPECS", "QUALITY", "HEADLINE",
           "specs_for", "headline"]

LIKELIHOOD_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("test_nll", "nats", "lower", "likelihood", se=True, variants="likelihood",
               reference="true_test_nll", headline=True,
               description="mean negative log-likelihood of the test rows (exact or a bound: "
                           "tag test_nll.kind); each extra likelihood as test_nll_<name>"),
    MetricSpec("test_nll_nfe", "evaluations", "lower", "cost",
               description="function evaluations of the likelihood solve"),
    MetricSpec("test_bpd", "bits/dim", "lower", "likelihood", se=True, variants="likelihood",
               headline=True,
               description="the test NLL of the 8-bit data in bits per dimension "
                           "(uniform dequantization)"),
    MetricSpec("true_test_nll", "nats", "lower", "exact", se=True,
               description="NLL of the dataset's closed-form density on the same test rows"),
    MetricSpec("test_nll_gap", "nats", "lower", "estimate", se=True,
               description="test_nll - true_test_nll; se paired over test rows"),
    MetricSpec("eval_seconds", "seconds", "lower", "cost",
               description="wall-clock of the test likelihoods"),
)

#: the sampling cost, recorded by the vector and the image sample scorers alike
SAMPLING_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("sample_seconds", "seconds", "lower", "cost", variants="sampler",
               description="wall-clock of drawing the scored samples"),
    MetricSpec("sample_nfe", "evaluations", "lower", "cost", variants="sampler",
               description="forward calls of the method's networks per sampling call "
                           "(counted by the harness)"),
)

_SAMPLE = "{} between model samples and test rows (vector data); .<sampler> per named sampler"
_FLOOR = "{} between training rows and test rows: what sampling the data itself reaches"
VECTOR_SAMPLE_SPECS: tuple[MetricSpec, ...] = (
    *(MetricSpec(name, "none", "lower", "estimate", se=True, variants="sampler",
                 reference=f"{name}_floor", description=_SAMPLE.format(what),
                 label="sample_metrics.estimator")
      for name, what in (("mmd2", "squared MMD (Gaussian kernel)"),
                         ("energy", "energy distance"),
                         ("swd", "sliced Wasserstein-2 distance"))),
    *(MetricSpec(f"{name}_floor", "none", "lower", "estimate", se=True,
                 description=_FLOOR.format(name), label="sample_metrics.floor")
      for name in ("mmd2", "energy", "swd")),
    MetricSpec("c2st", "accuracy", "lower", "estimate", se=True, variants="sampler",
               reference="c2st_floor", label="sample_metrics.c2st",
               description="classifier two-sample test, model samples vs test rows: an MLP's "
                           "cross-validated accuracy; 0.5 (indistinguishable) is the optimum, "
                           "below 0.5 is noise, 1 = separated"),
    MetricSpec("c2st_floor", "accuracy", "lower", "estimate", se=True,
               description=_FLOOR.format("the C2ST accuracy") + " (about 0.5)",
               label="sample_metrics.floor"),
    MetricSpec("sample_metrics_n", "count", "", "count",
               description="rows per side of the sample metrics"),
    MetricSpec("sample_metrics_bandwidth", "none", "", "statistic",
               description="kernel bandwidth of MMD (median rule on the test rows)"),
    *SAMPLING_SPECS,
)

#: precision/recall, density/coverage and memorisation of image runs
#: (`bench.science.image_quality`, on Inception features)
IMAGE_QUALITY_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("precision", "fraction", "higher", "estimate", label="quality.estimator",
               description="improved precision (k=3): generated images inside the reference "
                           "features' k-NN support (fidelity)"),
    MetricSpec("recall", "fraction", "higher", "estimate", label="quality.estimator",
               description="improved recall (k=3): reference images inside the generated "
                           "features' k-NN support (diversity)"),
    MetricSpec("density", "none", "higher", "estimate", label="quality.estimator",
               description="density (k=5): mean count of reference k-NN balls holding a "
                           "generated image, over k (about 1 when the distributions match)"),
    MetricSpec("coverage", "fraction", "higher", "estimate", label="quality.estimator",
               description="coverage (k=5): reference images whose k-NN ball holds a "
                           "generated image"),
    MetricSpec("memorisation_ratio", "none", "higher", "estimate",
               label="memorisation.estimator",
               description="median distance of generated images to their nearest training "
                           "image over the same median of held-out images (about 1 without "
                           "copying, near 0 for copies)"),
    MetricSpec("memorisation_close_fraction", "fraction", "lower", "estimate",
               label="memorisation.estimator",
               description="generated images closer to a training image than 99% of held-out "
                           "images are (about 0.01 without copying)"),
)

IMAGE_SAMPLE_SPECS: tuple[MetricSpec, ...] = (
    *SAMPLING_SPECS,
    MetricSpec("samples_per_second", "samples/second", "higher", "cost",
               description="generated images per second"),
    MetricSpec("fid", "none", "lower", "statistic", headline=True, label="fid.estimator",
               description="Frechet Inception distance of generated vs reference images"),
    MetricSpec("kid", "none", "lower", "estimate", headline=True, label="fid.estimator",
               description="kernel Inception distance (unbiased, mean over subsets)"),
    MetricSpec("kid_std", "none", "", "statistic",
               description="standard deviation of KID over its subsets"),
    MetricSpec("fid_n_samples", "count", "", "count", description="generated images scored"),
    MetricSpec("fid_n_reference", "count", "", "count", description="reference images"),
    MetricSpec("fid_sampler_nfe", "evaluations", "lower", "cost",
               description="network evaluations per sampling call of the FID images"),
    MetricSpec("kid_subset_size", "count", "", "count", description="images per KID subset"),
    MetricSpec("fid_seconds", "seconds", "lower", "cost",
               description="wall-clock of the Inception features and FID/KID"),
    MetricSpec("fid_n_train", "count", "", "count",
               description="training images the memorisation check compares samples with"),
    MetricSpec("quality_seconds", "seconds", "lower", "cost",
               description="wall-clock of precision/recall, density/coverage and the "
                           "memorisation check (with the training images' features)"),
    *IMAGE_QUALITY_SPECS,
)

#: figures of the training loop that tables and suite pages show (not a scorer's)
TRAINING_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("steps_done", "steps", "", "count",
               description="optimiser steps taken within the training budget (at equal "
                           "wall-clock, what a method's per-step cost leaves it)"),
)

#: every built-in spec by name (one spec per name: the shared sampling specs once)
BUILTIN_SPECS: dict[str, MetricSpec] = {
    s.name: s for s in LIKELIHOOD_SPECS + VECTOR_SAMPLE_SPECS + IMAGE_SAMPLE_SPECS
    + TRAINING_SPECS}
#: the sample-quality figures the report and the suite pages tabulate after the headline
#: ones, where runs recorded them
QUALITY: tuple[str, ...] = ("mmd2", "swd", "c2st", "precision", "recall", "density",
                            "coverage", "memorisation_ratio", "memorisation_close_fraction")
#: the headline metrics, in the order the report and the result line show them
HEADLINE: tuple[str, ...] = tuple(s.name for s in BUILTIN_SPECS.values() if s.headline)


def specs_for(records: Iterable[RunRecord]) -> dict[str, MetricSpec]:
    """The built-in specs updated with those the records carry (``bench.spec.<metric>``
    tags, oldest first: the newest record's spec of a name stands)."""
    specs = dict(BUILTIN_SPECS)
    for rec in records:
        specs = specs_from_tags(rec.tags, specs)
    return specs


def headline(specs: dict[str, MetricSpec]) -> tuple[str, ...]:
    """The headline metrics of ``specs``: the built-in ones in their order, then the rest
    by name."""
    extra = sorted(n for n, s in specs.items() if s.headline and n not in HEADLINE)
    return tuple(n for n in HEADLINE if specs.get(n, BUILTIN_SPECS[n]).headline) + tuple(extra)
