"""The unit of a recorded metric by name pattern: the fallback for figures without a spec
(training's seconds, steps and losses); a scorer's metrics carry their unit in their
`bench.api.MetricSpec` (`bench.api.metric_specs`).

>>> unit_of("test_nll"), unit_of("test_nll_nfe"), unit_of("test_bpd_se"), unit_of("fid")
('nats', 'evaluations', 'bits/dim', 'none')
"""

from __future__ import annotations

from fnmatch import fnmatchcase

__all__ = ["UNITS", "unit_of"]

#: (name pattern, unit), the first matching pattern wins: a count of function evaluations
#: or a time before the likelihood it belongs to (``test_nll_nfe``, ``val_nll_seconds``)
UNITS: tuple[tuple[str, str], ...] = (
    ("*nfe*", "evaluations"),
    ("*seconds*", "seconds"),
    ("*_mb", "MiB"),
    ("*bytes*", "bytes"),
    ("*step*", "steps"),
    ("epoch", "count"),
    ("n_*", "count"),
    ("*_n_samples", "count"),
    ("*bpd*", "bits/dim"),
    ("*nll*", "nats"),
    ("*elbo*", "nats"),
)


def unit_of(metric: str) -> str:
    """The unit of ``metric`` (its ``_se`` has the same), "none" when it has none (FID,
    KID, MMD^2, a method's own loss)."""
    for pattern, unit in UNITS:
        if fnmatchcase(metric, pattern):
            return unit
    return "none"
