"""FID and KID (bench/science/fid.py, bench/cli/fid.py): closed forms of the formulas, the TF1
resize, the pinned network, the reference-feature cache, and real features of a few CIFAR-10
proxy images (skipped without the offline data). The Inception network costs ~0.25 s per
image on one CPU thread, so the real-image tests use ~56 images in all, through module
fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.api.errors import ConfigError, DataError
from bench.cli.fid import fid as fid_command
from bench.data.imageset import write_grid_png
from bench.science import fid, fid_tfidelity

N_HALF = 12  # images per half of the proxy set in the real-feature tests


# formulas on synthetic features -------------------------------------------------------------
def test_frechet_distance_closed_forms() -> None:
    rng = np.random.default_rng(0)
    d, m, s = 6, rng.normal(size=6), 0.3
    # N(0, I) vs N(m, s^2 I): |m|^2 + d (1 - s)^2
    got = fid.frechet_distance(np.zeros(d), np.eye(d), m, s**2 * np.eye(d))
    assert got == pytest.approx(m @ m + d * (1 - s) ** 2, rel=1e-12)
    # diagonal covariances: sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    got = fid.frechet_distance(m, np.diag(a), m, np.diag(b))
    assert got == pytest.approx(((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-10)
    # general covariances: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), roots by eigendecomposition
    def spd(seed: int) -> np.ndarray:
        q = np.random.default_rng(seed).normal(size=(d, d))
        return q @ q.T + 0.1 * np.eye(d)

    def sqrt_psd(x: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(x)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    s1, s2 = spd(1), spd(2)
    r = sqrt_psd(s1)
    want = np.trace(s1 + s2 - 2 * sqrt_psd(r @ s2 @ r))
    assert fid.frechet_distance(m, s1, m, s2) == pytest.approx(want, rel=1e-9)
    with pytest.raises(DataError):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_of_sampled_gaussians_tracks_the_closed_form_and_grows_with_noise() -> None:
    rng = np.random.default_rng(1)
    n, d = 20000, 4
    x = rng.normal(size=(n, d))
    stats = fid.feature_stats(x)
    assert fid.frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-10)
    z, shift = rng.normal(size=(n, d)), np.array([0.5, 0.0, 0.0, 0.0])
    values = []
    for t in (0.0, 0.25, 0.5, 1.0):  # Y_t = t m + (1 + t) Z
        got = fid.frechet_distance(*stats, *fid.feature_stats(t * shift + (1 + t) * z))
        want = t**2 * shift @ shift + d * t**2
        assert got == pytest.approx(want, abs=0.02 + 0.05 * want)
        values.append(got)
    assert values == sorted(values) and values[0] < 0.01 < values[1]


@pytest.mark.parametrize(("n1", "n2", "d"), [(10, 14, 64), (40, 30, 16)])
def test_fid_from_features_equals_the_stats_formula(n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(4)
    f1 = rng.gamma(2.0, size=(n1, d))
    f2 = 1.3 * rng.gamma(2.0, size=(n2, d)) + 0.1
    (mu1, s1), (mu2, s2) = fid.feature_stats(f1), fid.feature_stats(f2)
    got = fid.fid_from_features(f1, f2)
    if max(n1, n2) > d:  # full rank: torch-fidelity's formula itself
        assert got == fid.frechet_distance(mu1, s1, mu2, s2)
        return
    # torch-fidelity's eigenvalues of S1 S2: ~1e-8 relative noise when rank-deficient
    assert got == pytest.approx(fid.frechet_distance(mu1, s1, mu2, s2), rel=1e-7)
    # an independent route: tr sqrt(S1 S2) = sum sqrt eig(A S2 A^T / (n1 - 1)), A centred
    a = f1 - mu1
    small = a @ s2 @ a.T / (n1 - 1)
    lam = np.linalg.eigvalsh((small + small.T) / 2)
    tr = np.sqrt(np.clip(lam, 0, None)).sum()
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr
    # Centring makes `small` rank n1 - 1: its null eigenvalue comes out of eigvalsh as noise
    # of size n1 * eps * lam_max (the solver's backward error), and its square root enters
    # tr, doubled: |error| <= 2 sqrt(n1 eps lam_max) (~1e-7 here, seen as 1.6e-7 apart on one
    # CPU and not on another), plus the sums' rounding, a few eps of the terms' size.
    eps = np.finfo(np.float64).eps
    null_noise = 2 * np.sqrt(n1 * eps * lam.max())
    terms = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) + 2 * tr
    assert abs(got - want) <= 2 * null_noise + 100 * eps * terms, (got, want, null_noise)
    assert abs(fid.fid_from_features(f1, f1)) < 1e-12 * np.trace(s1)


def test_kid_closed_form() -> None:
    # d = 1, k(a, b) = (a b + 1)^3; X = {0, 1}, Y = {1, 2}:
    # off-diagonal k_XX = 1 (twice), k_YY = 27 (twice); k_XY = 1, 1, 8, 27
    # MMD^2_u = (2 + 54) / (2 * 1) - 2 * 37 / 4 = 9.5, and every subset is the whole set
    mean, std = fid.kid(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]), subsets=3,
                        subset_size=1000)
    assert mean == pytest.approx(9.5, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DataError):
        fid.kid(np.zeros((1, 2)), np.zeros((5, 2)))


def test_kid_is_unbiased_at_small_samples() -> None:
    rng = np.random.default_rng(2)
    trials, m, d = 400, 8, 4
    unbiased, biased = [], []

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / d + 1) ** 3

    for _ in range(trials):
        x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        unbiased.append(fid.kid(x, y, subsets=1, subset_size=m)[0])
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    se = np.std(unbiased) / np.sqrt(trials)
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se  # the V-statistic's bias is what the test would catch


def test_kid_subsets_follow_torch_fidelity_rng_and_clip() -> None:
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(30, 5)), rng.normal(0.2, 1, size=(20, 5))
    mean, std = fid.kid(f1, f2, subsets=4, subset_size=10, seed=7)
    draws = np.random.RandomState(7)
    mmds = []
    for _ in range(4):  # torch-fidelity draws f1's subset, then f2's, per subset
        a, b = f1[draws.choice(30, 10, replace=False)], f2[draws.choice(20, 10, replace=False)]
        mmds.append(fid.kid(a, b, subsets=1, subset_size=10)[0])
    assert (mean, std) == pytest.approx((np.mean(mmds), np.std(mmds)), rel=1e-12)
    assert fid.kid(f1, f2, subset_size=1000, subsets=2) == fid.kid(f1, f2, subset_size=20,
                                                                    subsets=2)


# the reference-feature cache, with a counting stand-in extractor ----------------------------
class CountingExtractor:
    def __init__(self, id_: str = "mean-pixels") -> None:
        self.id, self.calls = id_, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = images.astype(np.float64)
        return np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, :, 0, 0].mean(1)], 1)


def test_reference_cache_reused_and_invalidated(tmp_path: Path) -> None:
    ref = np.random.default_rng(0).integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    ex = CountingExtractor()
    first = fid.reference_features(ref, ex, tmp_path)
    again = fid.reference_features(ref.copy(), ex, tmp_path)
    assert ex.calls == 1 and np.array_equal(first, again)
    changed = ref.copy()
    changed[3, 1, 2, 2] ^= 1  # one bit of one pixel
    fid.reference_features(changed, ex, tmp_path)
    assert ex.calls == 2
    fid.reference_features(ref.reshape(6, 3, 2, 8), ex, tmp_path)  # same bytes, other shape
    assert ex.calls == 3
    other = CountingExtractor("another-network")
    fid.reference_features(ref, other, tmp_path)
    assert other.calls == 1
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4 and all(p.suffix == ".npz" for p in files)  # no temporaries left
    for p in files:  # a corrupt entry is recomputed, not trusted
        p.write_bytes(b"junk")
    assert np.array_equal(fid.reference_features(ref, ex, tmp_path), first) and ex.calls == 4


def test_fid_kid_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gen = rng.integers(0, 256, (12, 1, 5, 5), dtype=np.uint8)
    ref = rng.integers(0, 200, (9, 1, 5, 5), dtype=np.uint8)
    res = fid.fid_kid(gen, ref, CountingExtractor(), tmp_path, kid_subsets=5)
    assert {k: res[k] for k in ("n_gen", "n_ref", "kid_subset_size", "kid_subsets",
                                "feature_extractor")} == {
        "n_gen": 12, "n_ref": 9, "kid_subset_size": 9, "kid_subsets": 5,
        "feature_extractor": "mean-pixels"}
    assert res["fid"] > 0 and np.isfinite(res["kid"]) and res["kid_std"] >= 0
    with pytest.raises(DataError, match="at least 2"):
        fid.fid_kid(gen[:1], ref, CountingExtractor(), None)
    with pytest.raises(DataError, match="uint8"):
        fid.fid_kid(gen.astype(np.float32), ref, CountingExtractor(), None)


# the TF1 resize -------------------------------------------------------------------------------
def test_resize_hand_computed_2x2_to_3x3() -> None:
    # scale 2/3: sample points 0, 2/3, 4/3 -> (0, 1, 2/3), (0, 1, 2/3), (1, 1, 0) (clamped)
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64).view(1, 1, 2, 2)
    want = torch.tensor([[0, 2 / 3, 1], [4 / 3, 2, 7 / 3], [2, 8 / 3, 3]], dtype=torch.float64)
    assert torch.allclose(fid.tf1_bilinear_resize(x, 3)[0, 0], want, atol=1e-7)


def test_resize_linear_ramp_has_tf1_sample_points() -> None:
    ramp = torch.arange(32, dtype=torch.float64).expand(2, 3, 5, 32)
    out = fid.tf1_bilinear_resize(ramp, (7, 299))
    pos = torch.arange(299, dtype=torch.float64) * (32 / 299)
    assert torch.allclose(out, pos.clamp(max=31).expand_as(out), atol=1e-5)  # top-left grid,
    assert out[..., 0].eq(0).all() and out[..., -1].eq(31).all()  # not half-pixel centres
    x = torch.rand(1, 3, 299, 299)
    assert torch.equal(fid.tf1_bilinear_resize(x, 299), x)
    with pytest.raises(ValueError):
        fid.tf1_bilinear_resize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 8)


def test_resize_bitwise_equals_torch_fidelity() -> None:
    try:
        module = fid_tfidelity._torch_fidelity_module("interpolate_compat_tensorflow")
    except fid.FIDUnavailable as exc:
        pytest.skip(str(exc))
    g = torch.Generator().manual_seed(0)
    for shape in [(32, 32), (28, 28), (64, 48), (500, 400)]:
        x = torch.rand(2, 3, *shape, generator=g) * 255
        want = module.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299),
                                                                align_corners=False)
        assert torch.equal(fid.tf1_bilinear_resize(x, 299), want)


# the network file ---------------------------------------------------------------------------
def test_hash_check_refuses_a_tampered_file(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "fid" / fid.INCEPTION_FILE
    fake.parent.mkdir()
    fake.write_bytes(b"\x80\x02 not the network")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("loaded unverified"))
    with pytest.raises(fid.FIDUnavailable, match="SHA-256"):
        fid.InceptionFeatures(data_dir=tmp_path)
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    with pytest.raises(fid.FIDUnavailable, match=f"place {fid.INCEPTION_FILE}"):
        fid.find_inception(tmp_path / "elsewhere")
    assert issubclass(fid.FIDUnavailable, DataError)


# real features of CIFAR-10 proxy images ------------------------------------------------------
@pytest.fixture(scope="module")
def inception(data_dir: Path | None) -> Path:
    try:
        return fid.find_inception(data_dir)
    except fid.FIDUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def proxy(data_dir: Path | None) -> np.ndarray:
    path = data_dir / "cifar10" / "test.npz" if data_dir else None
    if path is None or not path.is_file():
        pytest.skip("cifar10/test.npz not found under the data root (set BENCH_DATA_DIR)")
    with np.load(path, allow_pickle=False) as z:
        return np.ascontiguousarray(z["x"][:2 * N_HALF].transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def extractor(inception: Path) -> fid.InceptionFeatures:
    return fid.InceptionFeatures(inception, batch_size=4)


@pytest.fixture(scope="module")
def proxy_features(extractor, proxy) -> np.ndarray:
    return extractor(proxy)


def test_real_features_fid_self_zero_and_halves_stable(inception, proxy, proxy_features):
    assert proxy_features.shape == (2 * N_HALF, 2048) and proxy_features.dtype == np.float64
    a, b = proxy_features[:N_HALF], proxy_features[N_HALF:]
    assert abs(fid.fid_from_features(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))
    halves = fid.fid_from_features(a, b)
    assert 10 < halves < 1000  # two different sets of 12 images: far from 0, finite
    again = fid.InceptionFeatures(inception, batch_size=4)(proxy[:4])  # a fresh network
    assert np.array_equal(again, proxy_features[:4])  # bitwise on repeat
    a2 = np.concatenate([again, a[4:]])
    assert fid.fid_from_features(a2, b) == halves


def test_real_fid_and_kid_grow_with_noise(extractor, proxy, proxy_features) -> None:
    ref, clean = proxy_features[:N_HALF], proxy_features[N_HALF:]
    rng = np.random.default_rng(0)
    fids, kids = [], []
    for sigma in (0, 16, 48):  # Gaussian noise on the 0..255 scale
        if sigma:
            noisy = proxy[N_HALF:] + rng.normal(0, sigma, proxy[N_HALF:].shape)
            feats = extractor(np.clip(noisy, 0, 255).round().astype(np.uint8))
        else:
            feats = clean
        fids.append(fid.fid_from_features(feats, ref))
        kids.append(fid.kid(feats, ref)[0])
    assert fids == sorted(fids) and fids[-1] > 1.2 * fids[0], fids
    assert kids == sorted(kids), kids


def test_torch_fidelity_extractor_agrees(inception, proxy, proxy_features) -> None:
    """torch-fidelity's own FeatureExtractorInceptionV3 (its resize, normalisation and
    network code; weights: its own file if present, else the TorchScript's tensors mapped
    onto its layers) against ours. Runs wherever torch-fidelity is installed, even without
    torchvision (pip install --no-deps torch-fidelity==0.4.0)."""
    try:
        got = fid_tfidelity.torch_fidelity_features(proxy[:4], inception=inception)
    except fid.FIDUnavailable as exc:
        pytest.skip(str(exc))
    ours = proxy_features[:4]
    assert np.abs(got - ours).max() < 1e-4 * np.abs(ours).max()


def test_torch_fidelity_metrics_agree(inception, proxy, proxy_features, tmp_path) -> None:
    """torch_fidelity.calculate_metrics against fid_kid where torch-fidelity imports in full
    (it needs torchvision; CI: pip install torch-fidelity==0.4.0 with a torchvision that
    matches torch)."""
    try:
        import torch_fidelity
    except ImportError as exc:
        pytest.skip(f"import torch_fidelity failed: {exc}")
    weights = tmp_path / "w.pth"
    ts = torch.jit.load(str(inception), map_location="cpu").state_dict()
    torch.save(fid_tfidelity.torchscript_to_torch_fidelity(ts), weights)

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return torch.from_numpy(self.x[i])

    n = 8
    theirs = torch_fidelity.calculate_metrics(
        input1=Images(proxy[N_HALF:N_HALF + n]), input2=Images(proxy[:n]), fid=True, kid=True,
        cuda=False, kid_subset_size=n, feature_extractor_weights_path=str(weights),
        cache=False, verbose=False, save_cpu_ram=True)
    f_gen, f_ref = proxy_features[N_HALF:N_HALF + n], proxy_features[:n]
    ours = fid.fid_from_features(f_gen, f_ref)
    assert theirs["frechet_inception_distance"] == pytest.approx(ours, rel=1e-4)
    kid_mean = fid.kid(f_gen, f_ref, subset_size=n)[0]
    assert theirs["kernel_inception_distance_mean"] == pytest.approx(kid_mean, rel=1e-3,
                                                                     abs=1e-5)


# the command --------------------------------------------------------------------------------
def test_cli_fid_json_matches_the_library(inception, proxy, proxy_features, tmp_path):
    np.savez(tmp_path / "a.npz", x=proxy[:3].transpose(0, 2, 3, 1))  # NHWC
    folder = tmp_path / "b"
    folder.mkdir()
    for i, im in enumerate(proxy[4:7]):
        write_grid_png(im[None], folder / f"{i}.png", nrow=1, pad=0)
    shutil.copy(inception, tmp_path / "net.pt")
    args = [str(tmp_path / "a.npz"), str(folder), "--inception", str(tmp_path / "net.pt"),
            "--device", "cpu", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache"),
            "--json"]
    res = CliRunner().invoke(fid_command, args, catch_exceptions=False)
    out = json.loads(res.output)  # stdout is pure JSON
    a, b = proxy_features[:3], proxy_features[4:7]
    assert out["fid"] == pytest.approx(fid.fid_from_features(a, b), rel=1e-4)
    assert (out["n_gen"], out["n_ref"], out["kid_subset_size"]) == (3, 3, 3)
    assert out["a_shape"] == [3, 32, 32] and out["feature_extractor"].startswith("inception")
    assert out["resize"] == "tf1" and out["fid_from"] == "features"
    assert len(list((tmp_path / "cache").iterdir())) == 1  # B's features were cached
    text = CliRunner().invoke(fid_command, args[:-1], catch_exceptions=False).output
    assert text.startswith("FID ") and "KID " in text and "3 images" in text


def test_cli_fid_bad_input_is_one_error(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.zeros((2, 3, 4, 4), np.float32))
    np.save(tmp_path / "u.npy", np.zeros((2, 3, 4, 4), np.uint8))
    for args, error in [([str(tmp_path / "f.npy"), str(tmp_path / "u.npy")], DataError),
                        ([str(tmp_path / "u.npy"), str(tmp_path / "nothing")], DataError),
                        ([str(tmp_path / "u.npy")] * 2 + ["--kid-subset-size", "1"],
                         ConfigError)]:
        res = CliRunner().invoke(fid_command, args)
        assert isinstance(res.exception, error), (args, res.exception)
        assert "\n" not in str(res.exception)


class FakeInception:
    """A cheap stand-in for the Inception extractor in the command's tests: 8 deterministic
    features per image, the labels statistics files carry (sha256, resize, dim, id)."""

    def __init__(self, path=None, *, resize: str = "tf1", **_: object) -> None:
        from bench.science.fid_resize import get_resize

        self.path, self.sha256, self.dim = Path("fake.pt"), "f" * 64, 8
        self.resize = get_resize(resize).name
        self.id = f"fake:{self.sha256[:12]}+{get_resize(resize).rule}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64)
        return np.stack([x[:, k] + 0.1 * x[:, k + 1] * x[:, k + 2] / 255 for k in range(8)], 1)


def _fid_json(*args: str) -> dict:
    """`bench fid ARGS --device cpu --json`, parsed."""
    res = CliRunner().invoke(fid_command, [*args, "--device", "cpu", "--json"],
                             catch_exceptions=False)
    return json.loads(res.output)


def test_cli_fid_save_stats_then_stats_as_b_and_capped_kid(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(fid, "InceptionFeatures", FakeInception)
    rng = np.random.default_rng(3)
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (30, 1, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "b.npy", rng.integers(0, 200, (40, 1, 4, 4), dtype=np.uint8))
    a, b, s = (str(tmp_path / n) for n in ("a.npy", "b.npy", "s.npz"))

    full = _fid_json(a, b, "--save-stats", s)
    assert full["fid_from"] == "features" and full["resize"] == "tf1"
    assert full["kid_rows"] == [30, 40] and full["saved_stats"] == s
    capped = _fid_json(a, b, "--max-feature-rows", "5")
    assert capped["fid_from"] == "streamed statistics" and capped["kid_rows"] == [5, 5]
    from_file = _fid_json(a, s)
    assert from_file["fid_from"] == "streamed statistics" and from_file["n_ref"] == 40
    assert from_file["kid"] is None and "statistics file" in from_file["kid_unavailable"]
    # the routes differ by float64 rounding of the sums: ~n eps relative in the covariances,
    # amplified at most by the condition number of S_a S_b in the eigenvalue roots; x 100
    feats = [FakeInception()(np.load(p)) for p in (a, b)]
    cond = np.linalg.cond(np.cov(feats[0], rowvar=False) @ np.cov(feats[1], rowvar=False))
    tol = 100 * 40 * np.finfo(float).eps * cond * full["fid"]
    assert abs(capped["fid"] - full["fid"]) <= tol and abs(from_file["fid"] - full["fid"]) <= tol
    text = CliRunner().invoke(fid_command, [a, s], catch_exceptions=False).output
    assert "KID not available" in text and "resize tf1" in text
    for args, error, words in [([a, s, "--resize", "clean"], DataError, "resize"),
                               ([a, b, "--resize", "bicubic"], ConfigError, "tf1, clean"),
                               ([a, s, "--save-stats", s], ConfigError, "already")]:
        res = CliRunner().invoke(fid_command, args)
        assert isinstance(res.exception, error) and words in str(res.exception), args
        assert "\n" not in str(res.exception)


def test_cli_fid_reports_precision_recall_and_flags_a_copied_training_subset(tmp_path: Path,
                                                                           monkeypatch):
    monkeypatch.setattr(fid, "InceptionFeatures", FakeInception)
    rng = np.random.default_rng(4)
    train = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "t.npy", train)
    np.save(tmp_path / "copies.npy", train[:20])
    np.save(tmp_path / "b.npy", rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8))
    t, copies, b = (str(tmp_path / n) for n in ("t.npy", "copies.npy", "b.npy"))

    res = _fid_json(copies, b, "--train", t)
    # every copy is at distance 0 from the training set: below any held-out quantile
    assert res["memorisation_close_fraction"] == 1.0 and res["memorisation_ratio"] == 0.0
    assert res["labels"]["memorisation.verdict"].startswith("flagged")
    assert all(0 <= res[k] <= 1 for k in ("precision", "recall", "coverage"))
    honest = _fid_json(b, t)  # no --train: the four feature metrics, no memorisation check
    assert "memorisation_ratio" not in honest and "precision" in honest
    assert honest["labels"]["memorisation.skipped"] == "no --train images given"
    text = CliRunner().invoke(fid_command, [copies, b, "--train", t]).output
    assert "precision" in text and "memorisation: ratio 0.0000, flagged" in text
