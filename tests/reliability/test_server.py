"""A tracking server that is not there is refused in the plan phase within seconds; one
that dies mid-run costs seconds of retries, then the run finishes in a local fallback store
and says so."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner

from bench.api import ConfigError
from bench.record.store import check_tracking_uri

from ._server import ROOT, TINY, bench, env, free_port, kill, mlflow_server


def test_unreachable_server_is_refused_before_anything_runs(tmp_path):
    from bench.cli.main import main

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["run", *TINY, "--steps", "5", "--results-dir",
                                    str(tmp_path), "--tracking-uri", uri, "--json"])
    took = time.monotonic() - t0
    assert res.exit_code == 2, (res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: tracking server " + uri)
    assert "unreachable" in lines[0] and res.stdout == ""
    assert took < 15, took
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("code", [404, 503])
def test_health_check_refuses_what_is_not_a_healthy_mlflow(code):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/ok/health" else code)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with pytest.raises(ConfigError, match=f"answered {code}"):
            check_tracking_uri(base)
        check_tracking_uri(base + "/ok")  # 200 on /health: reachable
        check_tracking_uri("sqlite:////nonexistent/x.db")  # not a server: not checked here
    finally:
        srv.shutdown()


@pytest.mark.slow
def test_server_dies_mid_run_then_fallback(tmp_path, _mlflow_template):
    from bench.record.mlflow_read import load_records

    results = tmp_path / "results"
    with mlflow_server(tmp_path / "server", _mlflow_template) as (uri, server):
        run = subprocess.Popen(bench("run", *TINY, "--steps", "3000", "--eval-every", "1000",
                                     "--results-dir", str(results), "--tracking-uri", uri,
                                     "--experiment", "fb", "--json"),
                               cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while True:  # until the server holds some training metrics of the run
            assert run.poll() is None, run.communicate()
            recs = load_records(uri, "fb", history=("loss",))
            if recs and len(recs[0].history.get("loss", [])) >= 10:
                break
            assert time.monotonic() < deadline
            time.sleep(0.5)
        first_id = recs[0].run_id
        kill(server)
        killed_at = time.monotonic()
        out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert time.monotonic() - killed_at < 120  # seconds of retries, no long hang
    assert "continues in the local store" in err
    json.loads(out)  # --json stays pure through the fallback
    (rec,) = load_records(f"sqlite:///{results / 'fallback' / 'mlflow.db'}", "fb",
                          history=("loss",))
    assert rec.status == "FINISHED"
    assert rec.tags["bench.fallback_from"] == uri
    assert rec.tags["bench.fallback_run_id"] == first_id
    assert [s for s, _ in rec.history["loss"]] == list(range(1, 3001))  # nothing lost
    assert "checkpoint.pt" in rec.artifacts and "test_nll" in rec.metrics
