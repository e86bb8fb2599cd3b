"""Images end to end through `bench run`: InterFlow on CIFAR-10 (JPEG proxy), DDPM and the
CNF on MNIST, each with a tiny U-Net and a few steps, recording bits/dim (labelled), FID and
KID on the number of samples asked for (with the sampler's NFE and the reference split), a
samples grid PNG and the per-epoch cost; and a run where FID cannot be computed records why,
never a number."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from bench.cli.main import main

DATA = Path(os.environ.get("BENCH_DATA_DIR", "/nonexistent"))
INCEPTION = DATA / "fid" / "inception-2015-12-05-torchscript.pt"
UNET = ("unet_ch=8,unet_ch_mult=(1,2),unet_num_res_blocks=1,unet_attn_resolutions=(),"
        "batch_size=8")
FAST = ["--steps", "2", "--eval-every", "2", "--val-rows", "4", "--test-rows", "8",
        "--fid-samples", "8", "--fid-ref-rows", "8", "--rtol", "1e-3", "--atol", "1e-3",
        "--json", "-q"]

pytestmark = pytest.mark.skipif(not INCEPTION.is_file() or not (DATA / "mnist").is_dir(),
                                reason="needs BENCH_DATA_DIR with mnist/, cifar10/, fid/")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _run(tmp_path: Path, *args: str) -> dict:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    res = CliRunner().invoke(main, ["run", "--tracking-uri", uri, "--results-dir",
                                    str(tmp_path / "results"), *args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    (record,) = json.loads(res.stdout)
    assert record["status"] == "FINISHED", record["failure"]
    from bench.record.mlflow_sink import load_records

    (full,) = load_records(uri)
    return full


def _png_size(uri: str) -> tuple[int, int]:
    head = Path(urlparse(uri).path if uri.startswith("file:") else uri).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.parametrize("method, dataset, size, resize, train", [
    (f"interflow[{UNET}]", "cifar10", 32, "clean", []),
    (f"ddpm[{UNET},T=100,sample_steps=20]", "mnist", 28, "tf1", ["--fid-train-rows", "5"]),
    (f"cnf[{UNET},train_atol=1e-3,train_rtol=1e-3]", "mnist", 28, "tf1",
     ["--fid-train-rows", "0"]),
])
def test_image_run_records_bpd_fid_kid_grid_and_epoch_cost(tmp_path, method, dataset, size,
                                                          resize, train):
    r = _run(tmp_path, "-m", method, "-d", dataset, *FAST, "--fid-resize", resize, *train)
    m, tags = r.metrics, r.tags
    # bits/dim of the dequantized test images, labelled, on the rows scored
    assert 7.0 < m["test_bpd"] < 40.0  # an untrained model: above the uniform 8 bits/dim
    assert "uniform dequantization" in tags["test_bpd.dequantization"]
    assert tags["test_nll.kind"] == "estimate" and "hutchinson" in tags["test_nll.estimator"]
    assert "first 8 of" in tags["test_split"]
    # FID and KID on the samples asked for, with the sampler's NFE and the reference
    assert m["fid_n_samples"] == 8 and m["fid_n_reference"] == 8
    assert m["fid"] > 0 and m["fid_sampler_nfe"] >= 1 and "kid" in m
    assert tags["fid.reference"].startswith("test split:") and "first 8" in tags["fid.reference"]
    assert "inception-2015-12-05" in tags["fid.feature_extractor"]
    # the resize, labelled on the run and in the extractor id
    rule = {"tf1": "tf1-bilinear-299", "clean": "clean-pil-bicubic-299"}[resize]
    assert tags["fid.resize"].startswith(f"{resize} ({rule})")
    assert tags["fid.feature_extractor"].endswith("+" + rule)
    # the feature metrics on the same features, and the memorisation check against the
    # first training images: by default min(5000, the 8 reference images); 0: off
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and 0 <= m["coverage"] <= 1
    assert m["density"] >= 0 and m["quality_seconds"] > 0
    if train == ["--fid-train-rows", "0"]:
        assert "memorisation_ratio" not in m and "fid_n_train" not in m
        assert tags["memorisation.skipped"] == "--fid-train-rows 0"
    else:
        n_train = 8 if not train else 5
        assert m["memorisation_ratio"] > 0 and m["fid_n_train"] == n_train
        assert 0 <= m["memorisation_close_fraction"] <= 1
        assert f"train split, first {n_train} images" in tags["memorisation.estimator"]
    # the samples grid: 64 images of size x size in 8 rows with 2-pixel padding
    grid = r.artifacts["samples.png"]
    side = 8 * size + 9 * 2
    assert _png_size(grid) == (side, side)
    # per-epoch cost, measured per step and extrapolated to the epoch (steps < one epoch)
    assert m["steps_per_epoch"] > 2 and m["epoch_seconds_est"] > 0
    assert tags["effective_batch_size"] == "8"


def test_fid_unavailable_records_the_reason_and_no_number(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "mnist").symlink_to(DATA / "mnist")  # the data, but no fid/ network
    monkeypatch.delenv("BENCH_DATA_DIR")
    r = _run(tmp_path, "-m", f"interflow[{UNET}]", "-d", "mnist", "--data-dir", str(root),
             *FAST)
    assert "fid" not in r.metrics and "kid" not in r.metrics
    assert "inception" in r.tags["fid.unavailable"].lower()
    assert "samples.png" in r.artifacts  # the grid does not need the network
    assert "precision" not in r.metrics and r.tags["fid.resize"].startswith("tf1")


@pytest.mark.parametrize("args, error", [
    (["--fid-resize", "bicubic"], "--fid-resize must be tf1 or clean, got 'bicubic'"),
    (["--fid-train-rows", "-1"], "--fid-train-rows must be >= 0, got -1")])
def test_bad_fid_options_are_one_error_line(tmp_path, args, error):
    res = CliRunner().invoke(main, ["run", "-m", f"interflow[{UNET}]", "-d", "mnist",
                                    "--results-dir", str(tmp_path), *FAST, *args])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {error}"
