"""The documentation holds: the measurement pages are what docs/gen_measurements.py writes
from the committed data now, the public API's ``>>>`` examples run, ``import bench`` stays
cheap, the README stays short and its usage block is run elsewhere, and every page is on
the site. (`mkdocs build --strict` itself runs in `make test`; the code blocks of every
page run in tests/test_journeys.py.)"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the modules whose docstrings carry the public API's examples
DOCTEST_MODULES = ["bench", "bench.api.plugins", "bench.api.types", "bench.lab"]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and friends look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _load(ROOT / "docs" / "gen_measurements.py", "bench_docs_gen_measurements")


def test_generated_pages_are_up_to_date(gen):
    pages = gen.render()
    assert {p.name for p in pages} == {p.name for p in (ROOT / "docs/measurements").glob("*.md")}
    for path, text in pages.items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} is out of date: run python docs/gen_measurements.py")
    assert gen.main(["--check"]) == 0


def test_a_changed_figure_makes_the_pages_stale(gen, tmp_path, monkeypatch):
    """The check can fail: a re-measured baseline changes the page that quotes it."""
    shutil.copytree(ROOT / "results", tmp_path / "results",
                    ignore=shutil.ignore_patterns("mlflow*", "artifacts", "runs"))
    shutil.copytree(ROOT / "docs" / "measurements", tmp_path / "docs" / "measurements")
    base = tmp_path / "results/benchmarks/baseline.json"
    data = json.loads(base.read_text())
    figure = data["modes"]["full"]["figures"]["default_interflow_miniboone_seconds_total"]
    figure["value"] += 100.0
    base.write_text(json.dumps(data))
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "OUT", tmp_path / "docs" / "measurements")
    assert gen.main(["--check"]) == 1
    page = (tmp_path / "docs/measurements/default-run.md").read_text()
    assert f"{figure['value']:.1f} s" not in page
    assert gen.main([]) == 0 and f"{figure['value']:.1f} s" in (
        tmp_path / "docs/measurements/default-run.md").read_text()
    assert gen.main(["--check"]) == 0


def test_every_measured_figure_names_its_command(gen):
    for path, text in gen.render().items():
        if path.name in ("index.md", "published.md"):
            continue
        commands = re.findall(r"`((?:bench|python) [^`]+)`", text)
        assert commands, f"{path.name}: no command beside its figures"


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_public_api_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lab.run's artifacts go to a temporary folder anyway
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name}: no >>> examples"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_every_public_object_has_an_example():
    import bench

    for name in bench.__all__:
        if name == "__version__":
            continue
        doc = getattr(bench, name).__doc__ or ""
        assert ">>>" in doc, f"bench.{name} has no >>> example in its docstring"


def test_import_bench_is_cheap_and_versioned():
    code = ("import json, sys, bench; print(json.dumps({'heavy': sorted(m for m in "
            "('torch', 'mlflow', 'numpy', 'bench.api', 'bench.lab') if m in sys.modules), "
            "'version': bench.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=True)
    info = json.loads(out.stdout)
    assert info["heavy"] == [], f"import bench imported {info['heavy']}"
    assert info["version"] == metadata.version("ctgen-bench")


def test_lazy_exports_are_the_real_objects():
    import bench
    import bench.api
    import bench.lab

    for name in ("Method", "FlowMethod", "Dataset", "Splits", "LogLikelihood"):
        assert getattr(bench, name) is getattr(bench.api, name)
    assert bench.run is bench.lab.run and bench.load is bench.lab.load
    assert set(bench.__all__) <= set(dir(bench))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bench.nope  # noqa: B018


def _journeys():
    return _load(ROOT / "tests" / "test_journeys.py", "bench_docs_journeys")


def test_readme_is_short_and_its_skipped_commands_run_in_the_docs():
    """The README's usage block is marked skip because the docs run the same commands: hold
    that claim (a command edited on one side only fails here)."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    j = _journeys()
    run = {c for b in j.RUN if b.page != readme and b.lang == "sh" for c in j.commands(b.text)}
    skipped = [b for b in j.blocks(readme) if "runs as a journey in docs/" in b.mark]
    assert skipped, "the README's usage block is no longer marked as run in the docs"
    for b in skipped:
        missing = [c for c in j.commands(b.text) if re.sub(r"\s+", " ", c)
                   not in {re.sub(r"\s+", " ", r) for r in run}]
        assert not missing, f"README.md:{b.line}: not run by any docs page: {missing}"


def test_every_page_is_on_the_site():
    nav = set(re.findall(r"([\w/.-]+\.md)", (ROOT / "mkdocs.yml").read_text()))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages == nav, f"pages not in mkdocs.yml's nav: {pages - nav}; missing: {nav - pages}"
