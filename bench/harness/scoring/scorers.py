"""The built-in scorers (`bench.api.Scorer`), and the stage that runs every scorer of a job.

- ``likelihood``: test NLL (exact or bound), extra likelihoods, bits/dim on 8-bit data,
  the true NLL and the gap (`bench.harness.scoring.likelihood.evaluate`);
- ``sample_metrics``: MMD^2, energy distance and sliced W2 of each sampler against the
  test rows, with the data-vs-data floors (vector data,
  `bench.harness.scoring.vector_samples`);
- ``image_samples``: a samples grid, FID and KID (image data,
  `bench.harness.scoring.image_samples`);
- ``sample_plot``: model samples beside the test split (2-D data).

Their specs are `bench.api.metric_specs`; third-party scorers come from plug-in folders'
``scorers/`` (`bench.harness.planning.registry`) through ``Job.scorers``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bench.api import ConfigError, ContractError, Job, Method, Splits
from bench.api.metric_specs import IMAGE_SAMPLE_SPECS, LIKELIHOOD_SPECS, VECTOR_SAMPLE_SPECS
from bench.api.scoring import ScoreContext, Scorer, Scores, find_spec, spec_tags

__all__ = ["LikelihoodScorer", "VectorSampleScorer", "ImageSampleScorer", "SamplePlot",
           "BUILTIN_SCORERS", "scorers_of", "run_scorers"]

log = logging.getLogger(__name__)


class LikelihoodScorer(Scorer):
    """Test NLL / bits-per-dim of every method with a likelihood, labelled exact or bound."""

    name = "likelihood"
    specs = LIKELIHOOD_SPECS

    def score(self, model: Method, splits: Splits, ctx: ScoreContext) -> Scores:
        from bench.harness.scoring.likelihood import evaluate

        metrics, tags = evaluate(model, ctx.dataset, splits, ctx.device,
                                 test_rows=ctx.job.budget.test_rows)
        return Scores(metrics, tags)


class VectorSampleScorer(Scorer):
    """Sample metrics of vector data against the test rows, per sampler, with floors."""

    name = "sample_metrics"
    specs = VECTOR_SAMPLE_SPECS

    def applies(self, job: Job, splits: Splits) -> bool | str:
        return bool(job.evaluate_test) and len(splits.event_shape) == 1

    def score(self, model: Method, splits: Splits, ctx: ScoreContext) -> Scores:
        from bench.harness.scoring.vector_samples import sample_scores

        metrics, tags = sample_scores(model, splits, seed=ctx.seed, device=ctx.device,
                                      test_rows=ctx.job.budget.test_rows)
        return Scores(metrics, tags)


class ImageSampleScorer(Scorer):
    """Generated images: a grid PNG, FID and KID against a named split."""

    name = "image_samples"
    specs = IMAGE_SAMPLE_SPECS

    def applies(self, job: Job, splits: Splits) -> bool | str:
        return bool(job.evaluate_test) and len(splits.event_shape) == 3

    def score(self, model: Method, splits: Splits, ctx: ScoreContext) -> Scores:
        from bench.harness.scoring.image_samples import image_scores

        job = ctx.job
        return image_scores(model, splits, job.sample_eval, ctx.work_dir, ctx.device,
                            job.data_dir, ctx.title)


class SamplePlot(Scorer):
    """2-D data: histograms of model samples (--n-samples) beside the test split."""

    name = "sample_plot"

    def applies(self, job: Job, splits: Splits) -> bool | str:
        return tuple(splits.event_shape) == (2,) and job.n_samples > 0

    def score(self, model: Method, splits: Splits, ctx: ScoreContext) -> Scores:
        from bench.harness.scoring.likelihood import plot_samples

        png = plot_samples(model, splits, ctx.job.n_samples, ctx.work_dir / "samples.png",
                           ctx.title)
        return Scores(artifacts={"samples.png": png})


#: in the order they run (the likelihood first: it is the headline and the cheapest)
BUILTIN_SCORERS: tuple[type[Scorer], ...] = (LikelihoodScorer, VectorSampleScorer,
                                             ImageSampleScorer, SamplePlot)


def scorers_of(job: Job) -> list[Scorer]:
    """The built-in scorers, then the job's plug-in ones (``job.scorers``), instantiated.

    Raises:
        ConfigError: a plug-in scorer takes a built-in's name, or two share one.
    """
    out: list[Scorer] = []
    plugins = [c for c in getattr(job, "scorers", ()) if c not in BUILTIN_SCORERS]
    for cls in (*BUILTIN_SCORERS, *plugins):
        taken = [type(s) for s in out if s.name == cls.name]
        if taken:
            raise ConfigError(f"scorer name {cls.name!r} is taken twice: by "
                              f"{taken[0].__module__} and {cls.__module__}")
        out.append(cls())
    return out


def run_scorers(scorers: Sequence[Scorer], model: Method, splits: Splits, ctx: ScoreContext,
                rec: Any) -> None:
    """Run each scorer that ``applies`` and record, per scorer, its specs (tags
    ``bench.spec.<metric>``), tags, metrics and artifacts through ``rec`` (``set_tags``,
    ``log_metrics``, ``log_artifact``). A scorer that says why it does not apply leaves the
    tag ``scorer.<name>.skipped``.

    Raises:
        ContractError: a scorer returned no `Scores`, or a metric its specs do not declare.
    """
    for scorer in scorers:
        verdict = scorer.applies(ctx.job, splits)
        if isinstance(verdict, str):
            log.info("scorer %s skipped: %s", scorer.name, verdict)
            rec.set_tags({f"scorer.{scorer.name}.skipped": verdict})
            continue
        if not verdict:
            continue
        scores = scorer.score(model, splits, ctx)
        _check(scorer, scores)
        rec.set_tags({**spec_tags(scorer.specs), **scores.tags})
        if scores.metrics:
            rec.log_metrics({k: float(v) for k, v in scores.metrics.items()})
        for path in scores.artifacts.values():
            rec.log_artifact(path)


def _check(scorer: Scorer, scores: object) -> None:
    if not isinstance(scores, Scores):
        raise ContractError(f"scorer {scorer.name!r}: score() returned "
                            f"{type(scores).__name__}, not bench.api.Scores")
    specs = scorer.spec_map()
    undeclared = sorted(k for k in scores.metrics if find_spec(k, specs) is None)
    if undeclared:
        raise ContractError(f"scorer {scorer.name!r} recorded {', '.join(undeclared)}, "
                            f"which its specs do not declare")
