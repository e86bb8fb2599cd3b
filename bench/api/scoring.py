"""Scoring as a declared stage: what a scorer measures (`MetricSpec`), what it returns
(`Scores`) and the `Scorer` base class a plug-in file subclasses (benchopt's objective).

A scorer declares the figures it records as specs; the harness runs every scorer whose
``applies(job, splits)`` is true after training, records its ``Scores`` and the specs of
the scorer beside them (one tag ``bench.spec.<metric>`` each, `spec_tags`), so tables,
reports and the command line read a metric's unit, direction and kind from the record
itself (`specs_from_tags`; `bench.api.metric_specs.BUILTIN_SPECS` covers older records).

Families: a spec with ``variants="sampler"`` also covers the keys ``<name>.<sampler>`` (the
same figure for each of a method's named samplers, a table column each); one with
``variants="likelihood"`` covers ``<name>_<likelihood>`` (each extra likelihood, a table
row each, with its kind tagged ``<key>.kind``). ``se=True`` declares the companion
``<name>_se`` (and ``<key>_se`` of each variant), a standard error in the same unit.

>>> spec = MetricSpec("mmd2", better="lower", kind="estimate", se=True, variants="sampler")
>>> find_spec("mmd2.ode_se", {"mmd2": spec}) is spec
True
>>> MetricSpec.from_json(spec.to_json()) == spec
True
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench.api.errors import ContractError

if TYPE_CHECKING:
    from bench.api.jobs import Job
    from bench.api.plugins import Dataset, Method
    from bench.api.types import Splits

__all__ = ["MetricSpec", "Scores", "ScoreContext", "Scorer", "find_spec", "spec_tags",
           "specs_from_tags", "SPEC_TAG", "BETTER", "KINDS", "AGGREGATES", "VARIANTS"]

#: tag prefix of a recorded spec: ``bench.spec.<metric>`` = its JSON
SPEC_TAG = "bench.spec."
#: direction of a score; "" for a figure that is no score (a count, a setting)
BETTER = ("lower", "higher", "")
#: likelihood: exact or a bound, each run tags ``<key>.kind``; exact: a closed form;
#: estimate: a Monte-Carlo estimate with its own standard error; statistic: a statistic of
#: samples (FID); cost: time or evaluations; count: a number of rows, parameters, ...
KINDS = ("likelihood", "exact", "estimate", "statistic", "cost", "count")
#: how the runs of one configuration (its seeds) combine into a table cell
AGGREGATES = ("mean", "median", "min", "max")
VARIANTS = ("", "sampler", "likelihood")
_MAX_DESCRIPTION = 200  # one line: a recorded tag stays far below a tracker's 5000 chars


@dataclass(frozen=True)
class MetricSpec:
    """What one recorded figure is. Plain data, recorded as JSON with every run.

    Attributes:
        name: the metric key (no whitespace), e.g. ``test_nll``, ``fid``.
        unit: e.g. "nats", "bits/dim", "seconds"; "none" when it has none.
        better: "lower" or "higher" is better; "" for a figure that is no score.
        kind: one of `KINDS`.
        aggregate: how seeds combine in a table cell (one of `AGGREGATES`; "mean" shows
            mean ± std over seeds).
        description: one line saying what it is.
        se: the run also records ``<name>_se``, the standard error of this one run's value.
        variants: "sampler" or "likelihood" for a family of keys (see the module doc).
        reference: the key of a reference figure tables show beside it (the truth
            ``true_test_nll``, a floor ``mmd2_floor``), "" for none.
        headline: tabulated in the report and printed in ``bench run``'s result line.
        label: the run tag that says how the figure was estimated (``fid.estimator``,
            ``sample_metrics.estimator``), printed beside it where a table shows an
            estimator and the metric has no ``<key>.estimator`` tag of its own; "" for none.
    """

    name: str
    unit: str = "none"
    better: str = "lower"
    kind: str = "statistic"
    aggregate: str = "mean"
    description: str = ""
    se: bool = False
    variants: str = ""
    reference: str = ""
    headline: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ContractError(f"metric spec name {self.name!r}: a key without whitespace")
        for what, value, allowed in (("better", self.better, BETTER),
                                     ("kind", self.kind, KINDS),
                                     ("aggregate", self.aggregate, AGGREGATES),
                                     ("variants", self.variants, VARIANTS)):
            if value not in allowed:
                raise ContractError(f"metric spec {self.name!r}: {what} must be one of "
                                    f"{', '.join(repr(a) for a in allowed)}, got {value!r}")
        if "\n" in self.description or len(self.description) > _MAX_DESCRIPTION:
            raise ContractError(f"metric spec {self.name!r}: the description is one line of "
                                f"at most {_MAX_DESCRIPTION} characters")

    @property
    def direction(self) -> str:
        """"lower is better", "higher is better" or "" (no score)."""
        return f"{self.better} is better" if self.better else ""

    def to_json(self) -> str:
        """Compact JSON of the fields that differ from their defaults (and the name)."""
        defaults = MetricSpec(self.name)
        data = {k: v for k, v in asdict(self).items()
                if k == "name" or v != getattr(defaults, k)}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MetricSpec:
        """The spec of `to_json`; unknown fields (a newer bench) are ignored.

        Raises:
            ContractError: not a spec (bad JSON, no name, a bad field value).
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ContractError(f"metric spec {text[:60]!r}: not JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ContractError(f"metric spec {text[:60]!r}: not an object with a name")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _variant_base(key: str, spec: MetricSpec) -> str | None:
    """The rest of ``key`` after ``spec``'s name when ``key`` is a variant of it, else None."""
    sep = {"sampler": ".", "likelihood": "_"}.get(spec.variants)
    if sep and key.startswith(spec.name + sep) and len(key) > len(spec.name) + 1:
        return key[len(spec.name) + 1:]
    return None


def find_spec(key: str, specs: Mapping[str, MetricSpec]) -> MetricSpec | None:
    """The spec that declares metric ``key``: its own; the base's for ``<base>_se`` when the
    base has ``se``; the family's for a variant key (``mmd2.ode`` of ``mmd2``,
    ``test_nll_elbo`` of ``test_nll``; ``test_nll_elbo_nfe`` of ``test_nll_nfe`` when that is
    declared); None when none does.

    Args:
        specs: metric name -> spec.
    """
    if key in specs:
        return specs[key]
    if key.endswith("_se"):
        base = find_spec(key[:-3], specs)
        if base is not None and base.se:
            return base
    for spec in specs.values():
        rest = _variant_base(key, spec)
        if rest is None:
            continue
        companion = f"{spec.name}_{rest.rsplit('_', 1)[-1]}"
        if spec.variants == "likelihood" and "_" in rest and companion in specs:
            return specs[companion]
        return spec
    return None


def spec_tags(specs: Iterable[MetricSpec]) -> dict[str, str]:
    """The tags that record ``specs`` with a run: ``bench.spec.<name>`` -> its JSON."""
    return {f"{SPEC_TAG}{s.name}": s.to_json() for s in specs}


def specs_from_tags(tags: Mapping[str, str], base: Mapping[str, MetricSpec] | None = None
                    ) -> dict[str, MetricSpec]:
    """``base`` (e.g. the built-in specs) updated with the specs recorded in ``tags``; a tag
    that does not parse is skipped (the base, if any, stands)."""
    out = dict(base or {})
    for key, text in tags.items():
        if key.startswith(SPEC_TAG):
            try:
                spec = MetricSpec.from_json(text)
            except (ContractError, TypeError):
                continue
            out[spec.name] = spec
    return out


@dataclass
class Scores:
    """What one scorer measured of one trained model.

    Attributes:
        metrics: metric key -> value (keys declared by the scorer's specs).
        tags: labels of the numbers (estimators, references, why one was not computed).
        artifacts: a short name -> a file written under ``ctx.work_dir`` (a plot, a grid).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreContext:
    """What a scorer may use besides the model and the splits.

    Attributes:
        job: the run's job (device, seed, ``budget.test_rows``, ``sample_eval``, ...).
        dataset: the dataset instance (its closed-form ``log_prob`` where it has one).
        work_dir: the run's folder for files the scorer writes (artifacts).
    """

    job: Job
    dataset: Dataset | None
    work_dir: Path

    @property
    def device(self) -> str:
        return self.job.device

    @property
    def seed(self) -> int:
        return self.job.seed

    @property
    def title(self) -> str:
        """``<method> on <dataset> (seed <seed>)``, for figures."""
        return f"{self.job.method} on {self.job.dataset} (seed {self.job.seed})"


class Scorer(ABC):
    """One scoring of a trained model: subclass it in a file under a plug-in folder's
    ``scorers/`` (one class with a ``name``). The harness instantiates it without
    arguments and calls `score` with the evaluation weights in place (EMA), in eval mode,
    after the checkpoint is written.

    Example, the mean squared norm of 100 samples::

        class SampleNorm(Scorer):
            name = "sample_norm"
            specs = (MetricSpec("sample_sq_norm", better="lower", kind="statistic"),)

            def score(self, model, splits, ctx):
                x = model.sample(100)  # (100, *event_shape)
                return Scores({"sample_sq_norm": float(x.flatten(1).pow(2).sum(1).mean())})
    """

    name: ClassVar[str] = ""
    specs: ClassVar[tuple[MetricSpec, ...]] = ()

    def applies(self, job: Job, splits: Splits) -> bool | str:
        """Whether to score this run: True; False (silently not); or the reason it does not
        (recorded as the tag ``scorer.<name>.skipped``). Default: when the job scores the
        test split (not ``--no-test``)."""
        return bool(job.evaluate_test)

    @abstractmethod
    def score(self, model: Method, splits: Splits, ctx: ScoreContext) -> Scores:
        """Score ``model`` (the trained method) on ``splits`` (test rows: (n,
        *splits.event_shape)).

        Returns:
            `Scores` whose metric keys are declared by ``specs`` (`find_spec`).
        """

    @classmethod
    def spec_map(cls) -> dict[str, MetricSpec]:
        """Metric name -> spec of this scorer."""
        return {s.name: s for s in cls.specs}
