"""The architecture's import rules (import-linter contracts in pyproject.toml) hold, and a
violating import makes the check fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    if not LINT.exists():
        pytest.skip("import-linter is not installed (pip install -e .[test])")
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(ROOT / "bench", root / "bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_contracts_hold(copy):
    res = _lint(copy)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BROKEN" not in res.stdout


@pytest.mark.parametrize("module, bad", [
    ("bench/api/types.py", "import bench.science.ode"),           # the contract is a leaf
    ("bench/science/nets.py", "import bench.harness.planning.registry"),  # knows no harness
    ("bench/harness/scoring/cost.py", "import bench.record.tables"),  # reaches no record
    ("bench/record/tables.py", "import mlflow"),                  # only the sink uses mlflow
    ("bench/data/maf.py", "import bench.science.ode"),            # the data layer is a leaf
    ("bench/harness/planning/plan.py", "import bench.harness.training.loop"),  # floors
])
def test_a_violating_import_fails(copy, tmp_path, module, bad):
    root = tmp_path / "tree"
    shutil.copytree(copy, root)
    path = root / module
    path.write_text(path.read_text() + f"\n{bad}  # injected by the test\n")
    res = _lint(root)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout
