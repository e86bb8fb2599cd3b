"""A non-editable install (a wheel) lists every built-in plug-in, shipped inside the package
as bench/_plugins, and leaves an installed package named `datasets` (like HuggingFace's)
alone: not shadowed, not scanned as plug-ins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = {"method": {"interflow", "cnf", "ddpm", "gaussian_mle", "ffjord"},
           "dataset": {"checkerboard", "8gaussians", "gaussian", "miniboone", "power",
                       "cifar10", "mnist", "imagenet32", "flowers102"}}

LIST = """
import json, sys
from bench.harness.planning.registry import Registry
reg = Registry(entry_points=False)
scanned = 'datasets' in sys.modules
import bench, datasets
print(json.dumps({"bench": bench.__file__, "scanned": scanned, "marker": datasets.MARKER,
                  "plugins": {k: {n: [p.source, p.version, p.error or ""]
                                  for n, p in reg.plugins[k].items()} for k in reg.plugins}}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the sources (no stale build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("bench", "methods", "datasets"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(tmp / "dist"), str(src)])
    # the distribution is ctgen-bench (PyPI's "bench" is another package); a copy without
    # git metadata builds as setuptools-scm's fallback version
    (whl,) = (tmp / "dist").glob("ctgen_bench-*.whl")
    assert whl.name.startswith("ctgen_bench-0.1.0-"), whl.name
    return whl


def test_wheel_ships_every_module_and_plugin(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = sorted(sources - names)
    assert not missing, f"missing from the wheel (list new packages in pyproject.toml): {missing}"
    for sub in ("methods", "datasets"):
        for f in (ROOT / sub).glob("*.py"):
            assert f"bench/_plugins/{sub}/{f.name}" in names
    assert not any(n.startswith(("methods/", "datasets/")) for n in names)  # no top level


def test_installed_wheel_lists_builtins_and_keeps_datasets_package(wheel, tmp_path):
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
          "--target", str(site), str(wheel)])
    fake = site / "datasets"  # HuggingFace's `datasets` lives beside bench in site-packages
    fake.mkdir()
    (fake / "__init__.py").write_text("MARKER = 'the installed datasets package'\n")
    (fake / "arrow.py").write_text("raise RuntimeError('scanned as a plug-in')\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    out = _run([sys.executable, "-c", LIST], cwd=cwd, env=env)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(info["bench"]).is_relative_to(site), info["bench"]
    assert not info["scanned"] and info["marker"] == "the installed datasets package"
    for kind, expected in BUILTIN.items():
        found = info["plugins"][kind]
        assert expected <= set(found), f"{kind}s missing: {expected - set(found)}"
        for name, (source, version, _error) in found.items():
            assert Path(source).is_relative_to(site / "bench" / "_plugins"), (name, source)
            assert len(version) == 12
    assert "arrow" not in info["plugins"]["dataset"]
    assert not info["plugins"]["method"]["interflow"][2]  # available
