"""One source of run defaults (`bench.harness.planning.defaults`): budgets follow the dataset's
declared kind (a plug-in's too), and `bench.lab` plans exactly the job `bench run` plans."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from bench import lab
from bench.cli.main import main
from bench.harness.planning.defaults import BUDGETS, DEFAULTS
from bench.harness.planning.plan import plan_table
from bench.harness.planning.registry import Registry
from bench.harness.training.runfolder import job_key

PLUGIN = '''
from dataclasses import dataclass
import torch
from bench.api import Dataset, Splits


@dataclass
class Params:
    n: int = 300


class Blob{kind}(Dataset):
    name = "blob_{kind}"
    kind = "{kind}"
    Params = Params

    def load(self):
        x = torch.randn(self.params.n, 2, generator=torch.Generator().manual_seed(0))
        return Splits(x[:200], x[200:250], x[250:], (2,), "gaussian blob")
'''


def _dry_run(tmp_path, *args: str, plugins=None) -> list[dict]:
    pre = ["--plugins", str(plugins)] if plugins else []
    res = CliRunner().invoke(main, [*pre, "run", "--results-dir", str(tmp_path / "results"),
                                    *args, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture()
def plugins(tmp_path):
    folder = tmp_path / "plug" / "datasets"
    folder.mkdir(parents=True)
    for kind in ("toy2d", "tabular"):
        (folder / f"blob_{kind}.py").write_text(textwrap.dedent(PLUGIN.format(kind=kind)))
    return tmp_path / "plug"


def test_a_plugin_dataset_gets_the_budget_of_its_declared_kind(tmp_path, plugins):
    """A plug-in 2-D dataset (kind toy2d, no budget of its own) trains for the 2-D budget
    (15000 steps, validation every 1000), not the tabular one; a tabular plug-in for the
    tabular one; the built-in datasets by their kind too; --steps still overrides."""
    for kind in ("toy2d", "tabular"):
        (row,) = _dry_run(tmp_path, "-m", "interflow", "-d", f"blob_{kind}", plugins=plugins)
        assert row["budget"] == f"{BUDGETS[kind]['steps']} steps"
        assert row["eval every"] == BUDGETS[kind]["eval_every"]
    assert BUDGETS["toy2d"]["steps"] == 15000 and BUDGETS["tabular"]["steps"] == 5000
    (row,) = _dry_run(tmp_path, "-m", "interflow", "-d", "blob_toy2d", "--steps", "7",
                      plugins=plugins)
    assert row["budget"] == "7 steps" and row["eval every"] == 1000
    registry = Registry()
    for name in ("8gaussians", "miniboone"):
        cls = registry.get("dataset", name)
        assert DEFAULTS.budget_for(cls) == dict(BUDGETS[cls.kind])


def test_a_dataset_may_still_set_its_own_budget():
    class Own:
        kind = "toy2d"
        default_budget = {"steps": 11, "eval_every": 3}

    class Odd:
        name, kind, default_budget = "odd", "audio", None

    assert DEFAULTS.budget_for(Own) == {"steps": 11, "eval_every": 3}
    from bench.api import ConfigError

    with pytest.raises(ConfigError, match="declares kind 'audio'; valid: toy2d"):
        DEFAULTS.budget_for(Odd)


@pytest.mark.parametrize("method, dataset, args, settings", [
    ("interflow", "8gaussians", [], {}),
    ("interflow[hidden=(64,64)]", "miniboone", ["--set", "lr=3e-4", "--seeds", "2",
                                                "--steps", "300"],
     {"lr": 3e-4, "seed": 2, "steps": 300}),
    ("gaussian_mle", "power", ["--patience", "2", "--val-rows", "100"],
     {"patience": 2, "val_rows": 100}),
])
def test_lab_plans_the_job_bench_run_plans(tmp_path, method, dataset, args, settings):
    """Same selection, defaults left alone: the same plan row (budget, optimisation,
    solver, ...) and the same job key, a hash of everything that defines the run (the
    validation tolerance, the divergence bound, the samples, ...)."""
    (row,) = _dry_run(tmp_path, "-m", method, "-d", dataset, *args)
    job = lab.plan(method, dataset, **settings)
    assert job.solver.val_tol == DEFAULTS.val_tol == 1e-3  # lab used to validate at 1e-5
    assert job.budget.patience == settings.get("patience", DEFAULTS.patience)
    key = row.pop("job key")
    assert row.pop("estimate") == "unknown"  # the CLI's compute estimate: no runs measured
    assert json.loads(json.dumps(plan_table([job]), default=str)) == [row]
    assert job_key(job) == key
