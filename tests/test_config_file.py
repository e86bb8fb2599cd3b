"""``bench run --config FILE``: a TOML grid plans exactly what the equivalent command line
plans (compared on ``--dry-run --json``, job keys included), the command line overrides
the file, and a key or file that cannot be read is one ``error:`` line, exit 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli.main import main

GRID = '''
seeds = [0, 2]
steps = 20
eval-every = 10
max_seconds = 30.5
set = {batch_size = 16, lr = 0.002}
dataset = ["8gaussians[n_train=300]", "moons"]
rtol = 1e-4
divergence = "exact"
fresh = true
channels-last = true
fid-ref = "val"

[[method]]
name = "interflow"
hidden = [16, 8]
interpolant = "linear"

[[method]]
name = "cnf"
'''

ARGV = ["-m", "interflow[hidden=(16,8),interpolant=linear]", "-m", "cnf",
        "-d", "8gaussians[n_train=300]", "-d", "moons", "--seeds", "0,2", "--steps", "20",
        "--eval-every", "10", "--max-seconds", "30.5", "--set", "batch_size=16",
        "--set", "lr=0.002", "--rtol", "1e-4", "--divergence", "exact", "--fresh",
        "--channels-last", "--fid-ref", "val"]


def _plan(tmp_path, *args):
    res = CliRunner().invoke(main, ["run", *args, "--results-dir", str(tmp_path / "r"),
                                    "--dry-run", "--json"])
    return res, (json.loads(res.stdout) if res.exit_code == 0 else None)


def test_toml_grid_plans_what_the_command_line_plans(tmp_path):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(GRID)
    res_file, from_file = _plan(tmp_path, "--config", str(cfg))
    assert res_file.exit_code == 0, res_file.output
    res_argv, from_argv = _plan(tmp_path, *ARGV)
    assert res_argv.exit_code == 0, res_argv.output
    assert len(from_file) == 2 * 2 * 2  # methods x datasets x seeds
    assert from_file == from_argv
    # the settings reached the jobs (not both sides falling back to the same defaults)
    assert {r["budget"] for r in from_file} == {"20 steps 30.5 s"}
    assert {r["eval every"] for r in from_file} == {10}
    assert any("interpolant=linear" in r["params"] for r in from_file)


def test_command_line_overrides_the_file(tmp_path):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(GRID)
    res, rows = _plan(tmp_path, "--config", str(cfg), "--steps", "30", "-m", "cnf",
                      "--seeds", "1")
    assert res.exit_code == 0, res.output
    assert {r["method"] for r in rows} == {"cnf"} and {r["seed"] for r in rows} == {1}
    assert {r["budget"] for r in rows} == {"30 steps 30.5 s"}  # steps from argv, seconds file
    assert len(rows) == 2  # the file's two datasets remain


@pytest.mark.parametrize(("text", "words"), [
    ("stepz = 20\n", "unknown key 'stepz' (did you mean 'steps'?)"),
    ("config = 'other.toml'\n", "unknown key 'config'"),
    ("steps = [1, 2]\n", "expects one value"),
    ("steps = \n", "not TOML"),
    ("fresh = 'yes'\n", "expects true or false"),
    ("method = [{hidden = 3}]\n", "a table with a name"),
])
def test_bad_config_is_one_error_line_exit_2(tmp_path, text, words):
    cfg = tmp_path / "grid.toml"
    method = "" if text.startswith("method") else 'method = "cnf"\n'
    cfg.write_text('dataset = "moons"\n' + method + text)
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--dry-run"])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --config"), res.stderr
    assert words in lines[0] and "Traceback" not in res.output


def test_missing_config_file_is_one_error_line(tmp_path):
    res = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: --config") and "nope.toml" in res.stderr
