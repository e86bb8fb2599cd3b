"""The user's own paths as tests: every command block and every Python block of README.md
(and of any page under docs/) runs here the way a user runs it, in fresh processes, with a
fresh HOME, TMPDIR and working folder (no state left by earlier runs or other tests).

- A ```sh block runs line by line (``\\`` continuations joined, ``&&`` chains split,
  ``export`` kept for the lines after it). ``bench run`` and ``bench speedup`` get tiny
  budgets appended (click keeps the last value of a repeated option, so the user's own
  flags are otherwise untouched). A command that needs a GPU, a cluster, a server or data
  that is not offline is still planned: ``bench run ... --dry-run`` (the reason is in
  `NEEDS`). Other programs (``make``, ``mlflow``, ``git``, ``ray``, ``kubectl``) are not run
  here: a block made only of them carries a ``<!-- journey: skip: why -->`` line.
- A ```python block that defines a plug-in (``class X(Method|FlowMethod|Dataset|Scorer)``,
  named by the ``(`methods/NAME.py`)`` before it) is written to that path in the working
  folder, as the page tells the user, and then trained by ``bench run`` (the method on
  8gaussians, the dataset under gaussian_mle, a scorer's figures recorded on gaussian_mle
  and 8gaussians): FINISHED, exit 0. Any other Python block runs as a script.
- Every fenced block is either run, or marked: a README edit that breaks a journey, or
  adds a command block nobody runs, fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TIMEOUT = 300

#: tiny budgets appended to every `bench run` (a user's full run takes minutes)
TINY_RUN = ["--steps", "4", "--eval-every", "2", "--patience", "1", "--val-rows", "32",
            "--test-rows", "32", "--n-samples", "64", "--fid-samples", "8",
            "--fid-ref-rows", "16", "--rtol", "1e-3", "--atol", "1e-3", "--val-tol", "1e-2",
            "--set", "batch_size=16"]
TINY_SPEEDUP = ["--budget", "4", "--evals", "2", "--val-rows", "32", "--rtol", "1e-3",
                "--atol", "1e-3", "--no-test"]
#: what makes a `bench run` a plan-only journey here, and why
NEEDS = {"--launcher ray": "a Ray cluster", "--device cuda": "a GPU",
         "--fid-samples 1000": "GPU-sized FID sampling (1000 images of a U-Net)",
         "-d power": "the full MAF archive (POWER is not in the offline data)"}
#: programs a block may show that are not run here (their block is marked skip)
NOT_RUN = ("make", "mlflow", "git", "ray", "kubectl", "pip", "ssh", "srun", "sbatch")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str
    mark: str  # "" (run) or "skip: why"
    path: str | None  # the plug-in file a python block is presented as

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        before = [x for x in lines[max(0, start - 3):start] if x.strip()]
        mark = ""
        if before and (mm := re.match(r"<!-- journey: (.*?) -->", before[-1].strip())):
            mark = mm.group(1)
        path = None
        if before and (mp := re.search(r"\(`((?:methods|datasets|scorers)/\w+\.py)`\):?$",
                                       before[-1].strip())):
            path = mp.group(1)
        out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]), mark, path))
        i = j + 1
    return out


ALL = [b for p in PAGES if p.is_file() for b in blocks(p)]
RUN = [b for b in ALL if b.lang in ("sh", "python") and not b.mark.startswith("skip")]
SKIPPED = [b for b in ALL if b.mark.startswith("skip")]


def commands(text: str) -> list[str]:
    """Shell lines of a block: comments dropped, continuations joined, && split."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def test_every_block_is_run_or_marked():
    """A block that shows commands or code is a journey (```sh / ```python) or says why it
    is not run; plain blocks hold only text (listings, layouts)."""
    assert RUN, "no journeys found"
    for b in ALL:
        if b.lang in ("sh", "python") or b.mark:
            continue
        assert b.lang in ("", "text"), f"{b.id}: unknown block language {b.lang!r}"
        for cmd in commands(b.text):
            word = cmd.split()[0]
            assert word not in ("bench", "torchrun", "python", *NOT_RUN), (
                f"{b.id}: a command in a plain block ({cmd!r}): make it ```sh (a journey) or "
                "mark it <!-- journey: skip: why -->")
    for b in SKIPPED:
        assert len(b.mark) > len("skip: ") + 10, f"{b.id}: say why it is skipped"


def _env(base: Path) -> dict[str, str]:
    for sub in ("home", "tmp", "cache"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "BENCH_", "RAY_")) and k not in ("PYTHONPATH",)}
    env.update(HOME=str(base / "home"), TMPDIR=str(base / "tmp"),
               XDG_CACHE_HOME=str(base / "cache"), MPLCONFIGDIR=str(base / "cache"),
               OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true",
               BENCH_PLUGINS=str(base / "work"), BENCH_PROGRESS_SECONDS="3600")
    data = os.environ.get("BENCH_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    if Path(data).is_dir():
        env["BENCH_DATA_DIR"] = data
    return env


def _bench_argv(cmd: str) -> tuple[list[str], str | None]:
    """argv of a `bench ...` (or `torchrun ... -m bench ...`) line with tiny budgets, and the
    reason it is only planned (None: it runs)."""
    argv = shlex.split(cmd)
    if argv[0] == "torchrun":
        argv = ["bench", *argv[argv.index("-m") + 2:]]
        why = "a torchrun launch on GPUs"
    else:
        why = next((w for k, w in NEEDS.items() if k in cmd), None)
    sub = next((a for a in argv[1:] if not a.startswith("-")), "")
    if sub == "run":
        argv += ["--dry-run"] if why else TINY_RUN
    elif sub == "speedup":
        argv += TINY_SPEEDUP
    return [sys.executable, "-m", "bench", *argv[1:]], why


def _make_recipe(target: str) -> list[str]:
    """The `bench` commands of a Makefile target's recipe (``$(BIN)/bench`` -> ``bench``)."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M)
    assert m, f"no target {target!r} in the Makefile"
    return [line.strip().replace("$(BIN)/bench", "bench")
            for line in m.group(1).splitlines() if "$(BIN)/bench" in line]


def _fixtures(work: Path, cmd: str) -> None:
    """Files a command names that a user would already have: image sets for `bench fid`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in re.findall(r"(\S+\.npz)", cmd):
        np.savez(work / name, x=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8))
    for name in re.findall(r"(\S+)/(?=\s|$)", cmd):
        if name.startswith(("results", "-")):
            continue
        (work / name).mkdir(exist_ok=True)
        for k in range(24):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                work / name / f"{k:03d}.png")


def _run(argv: list[str], work: Path, env: dict[str, str], what: str) -> str:
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, (f"{what}: exit {proc.returncode}\n$ {shlex.join(argv)}\n"
                                  f"{proc.stderr[-3000:]}")
    return proc.stdout


def _write_plugins(work: Path, scorers: bool = False) -> list[tuple[str, str]]:
    """Every plug-in block of the pages, written where the page says it lives; returns
    (kind, name) of each. Scorers only when asked (their own journey): a scorer in the
    folder would score every run of every other journey too."""
    out = []
    for b in ALL:
        if b.lang == "python" and b.path and (scorers or not b.path.startswith("scorers/")):
            m = re.search(r'name\s*=\s*"([^"]+)"', b.text)
            assert m, f"{b.id}: a plug-in block without a name"
            (work / b.path).parent.mkdir(parents=True, exist_ok=True)
            (work / b.path).write_text(b.text + "\n")
            out.append((b.path.split("/")[0], m.group(1)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_journey(block: Block, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _env(tmp_path)
    _write_plugins(work)  # the user has pasted the README's plug-ins (any page may use them)
    if block.lang == "python":
        if block.path:  # a plug-in: trained by bench run
            kind, name = next(k for k in _write_plugins(work, block.path.startswith("scorers/"))
                              if f"/{k[1]}." in block.path
                              or block.path.endswith(f"{k[1]}.py"))
            sel = {"methods": ["-m", name, "-d", "8gaussians"],
                   "datasets": ["-m", "gaussian_mle", "-d", name],
                   "scorers": ["-m", "gaussian_mle", "-d", "8gaussians"]}[kind]
            out = _run([sys.executable, "-m", "bench", "run", *sel, *TINY_RUN, "--json"],
                       work, env, block.id)
            import json

            records = json.loads(out)
            assert [r["status"] for r in records] == ["FINISHED"], out
            if kind == "scorers":  # every figure the scorer declares is recorded
                declared = re.findall(r'MetricSpec\("(\w+)"', block.text)
                assert declared and set(declared) <= set(records[0]), out  # flat JSON record
            return
        script = work / "journey.py"
        script.write_text(block.text + "\n")
        _run([sys.executable, str(script)], work, env, block.id)
        return
    for cmd in commands(block.text):
        word = cmd.split()[0]
        if word == "export":
            k, _, v = cmd[len("export "):].partition("=")
            env[k.strip()] = os.path.expandvars(v.strip().strip("'\""))
            continue
        if word == "make":  # its bench commands, from the Makefile's own recipe
            target = cmd.split()[1]
            if target != "test":  # `make test` is the suite running this test
                for line in _make_recipe(target):
                    _run(_bench_argv(line)[0], work, env, f"{block.id} ({cmd}: {line})")
            continue
        assert word in ("bench", "torchrun"), (
            f"{block.id}: {cmd!r} is not a bench command: mark the block "
            "<!-- journey: skip: why --> or move the command out of it")
        _fixtures(work, cmd)
        argv, why = _bench_argv(cmd)
        _run(argv, work, env, f"{block.id} ({why + ': planned only' if why else 'run'})")
