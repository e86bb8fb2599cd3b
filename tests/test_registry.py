"""Discovery of plug-ins: built-in (checkout or wheel), --plugins, BENCH_PLUGINS, entry
points; unavailable plug-ins with reasons; plug-ins import only bench.api / bench.science."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.api.errors import ConfigError, PluginUnavailable
from bench.harness.planning.registry import Registry, builtin_root, checkout_root

METHOD = '''
from dataclasses import dataclass
from bench.api import Method

@dataclass
class Params:
    width: int = 3

class {cls}(Method):
    """A plug-in written for the tests."""
    name = "{name}"
    Params = Params

    def modules(self):
        return {{}}

    def loss(self, batch, step):
        return batch.sum()

    def sample(self, n):
        raise NotImplementedError

    def log_prob(self, x):
        raise NotImplementedError
'''


def write(folder: Path, kind: str, stem: str, text: str) -> Path:
    (folder / kind).mkdir(parents=True, exist_ok=True)
    path = folder / kind / f"{stem}.py"
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_plugins_are_discovered(registry):
    assert {"interflow"} <= set(registry.names("method"))
    assert {"checkerboard", "8gaussians", "spirals", "gaussian", "miniboone", "power"} <= set(
        registry.names("dataset"))
    mod = sys.modules[registry.get("method", "interflow").__module__]
    assert mod.__name__ == "bench_plugins.methods.interflow"
    plugin = registry.plugins["method"]["interflow"]
    path = Path(plugin.source)
    assert path.parent.parent == builtin_root() and path.name == "interflow.py"
    assert plugin.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_checkout_root_needs_the_bench_pyproject(tmp_path):
    """The parent of the package is scanned only when it is bench's own checkout, never an
    arbitrary folder such as site-packages."""
    pkg = tmp_path / "bench"
    pkg.mkdir()
    assert checkout_root(pkg) is None and builtin_root(pkg) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "bench"\n')  # not its command
    assert checkout_root(pkg) is None
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "any-name"\n[project.scripts]\nbench = "bench.cli.main:main"\n')
    assert checkout_root(pkg) == tmp_path == builtin_root(pkg)
    (pkg / "_plugins" / "methods").mkdir(parents=True)  # a wheel's shipped plug-ins win
    assert builtin_root(pkg) == pkg / "_plugins"
    assert checkout_root(Path(__file__).resolve().parents[1] / "bench") is not None


def test_abstract_plugin_is_unavailable_with_the_missing_names(tmp_path):
    text = METHOD.format(cls="Half", name="half")
    text = text.replace("def loss(", "def _loss(").replace("def sample(", "def _sample(")
    write(tmp_path, "methods", "half", text)
    reg = Registry(extra_dirs=[tmp_path])
    plugin = reg.plugins["method"]["half"]
    assert not plugin.available
    assert plugin.error == "abstract methods not implemented: loss, sample"
    with pytest.raises(PluginUnavailable, match="abstract methods not implemented: loss"):
        reg.get("method", "half")


def _bench_imports(path: Path) -> list[str]:
    """Every module of bench a file imports (absolute imports, also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bench":
                found += [f"bench.{a.name}" for a in node.names]
            else:
                found.append(node.module)
    return [m for m in found if m == "bench" or m.startswith("bench.")]


def test_plugins_import_only_the_contract_the_science_and_the_data(tmp_path):
    """Plug-ins are not a package, so import-linter cannot see them: parse their imports."""
    root = builtin_root()
    files = sorted(root.glob("methods/*.py")) + sorted(root.glob("datasets/*.py"))
    assert len(files) >= 5
    allowed = ("bench.api", "bench.science", "bench.data")
    bad = [f"{f.name}: {m}" for f in files for m in _bench_imports(f)
           if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not bad, f"plug-ins may import only bench.api, bench.science and bench.data: {bad}"
    probe = tmp_path / "p.py"
    probe.write_text("import bench.harness.training.optim\nfrom bench import record\n"
                     "from bench.science import nets\ndef f():\n    from bench.cli import main\n")
    assert _bench_imports(probe) == ["bench.harness.training.optim", "bench.record",
                                     "bench.science", "bench.cli"]


def test_plugins_folder_and_env(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "methods", "mine", METHOD.format(cls="Mine", name="mine"))
    write(b, "methods", "other", METHOD.format(cls="Other", name="other"))
    monkeypatch.setenv("BENCH_PLUGINS", str(b))
    reg = Registry(extra_dirs=[a])
    assert reg.get("method", "mine").name == "mine"
    assert reg.get("method", "other").name == "other"
    _, params = reg.resolve("method", "mine[width=7]")
    assert params.width == 7


def test_broken_plugin_is_listed_and_raises_only_when_selected(tmp_path):
    write(tmp_path, "methods", "broken", "import not_a_module_anywhere\n")
    reg = Registry(extra_dirs=[tmp_path])
    plugin = reg.plugins["method"]["broken"]
    assert not plugin.available and "not_a_module_anywhere" in plugin.error
    assert reg.get("method", "interflow")  # others still usable
    with pytest.raises(PluginUnavailable, match="not_a_module_anywhere"):
        reg.get("method", "broken")


def test_duplicate_names_name_both_files(tmp_path):
    write(tmp_path, "methods", "dup", METHOD.format(cls="Dup", name="interflow"))
    with pytest.raises(ConfigError) as e:
        Registry(extra_dirs=[tmp_path])
    msg = str(e.value)
    assert "duplicate method name 'interflow'" in msg
    assert "interflow.py" in msg and "dup.py" in msg


def test_unknown_name_lists_valid_and_closest(registry):
    with pytest.raises(ConfigError) as e:
        registry.get("method", "interflw")
    assert "did you mean 'interflow'" in str(e.value) and "valid:" in str(e.value)
    with pytest.raises(ConfigError, match="unknown parameter 'lrr'"):
        registry.resolve("method", "interflow[lrr=1]")


def test_entry_points(monkeypatch, tmp_path):
    from importlib import metadata

    path = write(tmp_path, "pkg", "ep_mod", METHOD.format(cls="FromEP", name="from_ep"))
    monkeypatch.syspath_prepend(str(path.parent))

    def fake(group=None):
        if group == "bench.methods":
            return [metadata.EntryPoint("from_ep", "ep_mod:FromEP", group)]
        return []

    monkeypatch.setattr(metadata, "entry_points", fake)
    reg = Registry()
    assert reg.get("method", "from_ep").__name__ == "FromEP"


def test_plugin_folders_do_not_shadow_installed_datasets_package(tmp_path):
    """A package named `datasets` (like HuggingFace's) stays importable after discovery."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARKER = 'the installed datasets package'\n")
    code = (
        "import sys; sys.path.insert(0, {!r})\n"
        "from bench.harness.planning.registry import Registry; Registry()\n"
        "assert 'datasets' not in sys.modules\n"
        "import datasets; print(datasets.MARKER)\n".format(str(tmp_path / "site"))
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "the installed datasets package" in out.stdout


def test_cli_import_is_light():
    code = "import sys, bench.cli; assert 'torch' not in sys.modules; " \
           "assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
