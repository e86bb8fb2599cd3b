"""The U-Net shared by the image methods (bench/science/unet.py, unet_config.py), its flow
wrapper, and the evaluation divergence ``auto`` of the engine (bench/science/ode.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

from bench.api import SolverConfig
from bench.harness.planning.registry import Registry
from bench.science.nets import count_parameters
from bench.science.ode import log_likelihood, standard_normal_log_prob
from bench.science.unet import UNet, VelocityUNet, build_unet
from bench.science.unet_config import UNetParams, default_ch_mult

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = UNetParams(unet_ch=8, unet_ch_mult=(1, 2), unet_num_res_blocks=1,
                  unet_attn_resolutions=(4,), dropout=0.0)


def _randomise_output(net: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Ho et al. zero-initialise each block's last conv and the output conv, so a fresh U-Net
    is the zero field; give every zero weight random values for a field with a divergence."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return net


def test_velocity_unet_shapes_and_time_scaling():
    torch.manual_seed(0)
    unet = _randomise_output(UNet(**TINY.unet_kwargs((3, 8, 8)))).eval()
    v = VelocityUNet(unet)
    x = torch.randn(5, 3, 8, 8)
    t = torch.rand(5)
    out = v(t, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # v(t, x) is the U-Net at DDPM's index 1000 t, row by row
    torch.testing.assert_close(out, unet(x, 1000.0 * t), rtol=0, atol=0)
    # one time for the batch (a 0-d tensor, a float, a (1,) tensor) is broadcast to the rows
    for scalar in (torch.tensor(0.3), 0.3, torch.tensor([0.3])):
        torch.testing.assert_close(v(scalar, x), unet(x, torch.full((5,), 300.0)))
    # the time matters (the embedding of 1000 t, not of t, reaches the network)
    assert not torch.allclose(v(0.3, x), v(0.7, x))
    assert not torch.allclose(v(0.3, x), unet(x, torch.full((5,), 0.3)))


@pytest.mark.parametrize(("shape", "mult"), [((1, 28, 28), (1, 2, 2)),
                                             ((3, 32, 32), (1, 2, 2, 2)),
                                             ((3, 128, 128), (1, 1, 2, 3, 4)),
                                             ((1, 8, 8), (1, 2)),
                                             ((1, 24, 24), (1, 2, 2))])
def test_default_ch_mult_builds_for_mnist_cifar_and_flowers(shape, mult):
    assert default_ch_mult(shape[1]) == mult
    params = UNetParams(unet_ch=8, unet_num_res_blocks=1, dropout=0.0)
    net = build_unet(params, shape, velocity=True)
    x = torch.randn(1, *shape)
    with torch.no_grad():
        assert net(0.5, x).shape == x.shape


def test_size_of_ho_et_al_cifar10_network():
    """ch=128, (1, 2, 2, 2), 2 blocks, attention at 16: Ho et al.'s 35.7M parameters."""
    net = build_unet(UNetParams(), (3, 32, 32))
    assert count_parameters(net) == 35_746_307


def test_unet_fields_are_shared_by_the_image_methods():
    reg = Registry()
    fields = {f.name for f in dataclasses.fields(UNetParams)}
    for name in ("interflow", "cnf", "ddpm"):
        cls = reg.get("method", name)
        assert issubclass(cls.Params, UNetParams), name
        assert cls.supports("image", (3, 32, 32)) is None and cls.event_ranks == (1, 3)
        p = cls.Params()
        ref = UNetParams(dropout=p.dropout)
        assert all(getattr(p, f) == getattr(ref, f) for f in fields), name
    assert reg.get("method", "cnf").Params().dropout == 0.0  # a deterministic ODE field
    with pytest.raises(ValueError, match="dropout must be 0"):
        reg.get("method", "cnf").Params(dropout=0.1)
    with pytest.raises(ValueError, match="unet_ch_mult"):
        UNetParams(unet_ch_mult=())


# -- evaluation divergence --------------------------------------------------------------------
class LinearField(nn.Module):
    """v(t, x) = A x on the flattened event; div v = tr(A)."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(0.3 * torch.randn(dim, dim, generator=g) / math.sqrt(dim))

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) @ self.a.T).reshape(x.shape)


@pytest.mark.parametrize(("shape", "used"), [((128,), "exact"), ((129,), "hutchinson"),
                                             ((2, 8, 8), "exact"), ((3, 8, 8), "hutchinson")])
def test_auto_divergence_is_exact_up_to_128_dimensions(shape, used):
    dim = math.prod(shape)
    field = LinearField(dim)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(1))
    auto = SolverConfig(rtol=1e-6, atol=1e-6)
    assert auto.divergence == "auto" and auto.divergence_for(dim) == used
    ll = log_likelihood(field, x, standard_normal_log_prob, auto, seed=3)
    explicit = log_likelihood(field, x, standard_normal_log_prob,
                              dataclasses.replace(auto, divergence=used), seed=3)
    assert torch.equal(ll.values, explicit.values)  # the same solve, the same probes
    assert ll.kind == ("exact" if used == "exact" else "estimate")
    assert ll.estimator == explicit.estimator
    assert ll.estimator.endswith("div=exact" if used == "exact"
                                 else "div=hutchinson(rademacher,k=1)")
    # the exact trace of a linear field is tr(A): the closed form
    a = field.a.detach()
    closed = (standard_normal_log_prob(x.reshape(6, -1) @ torch.linalg.matrix_exp(-a).T)
              - torch.trace(a))
    if used == "exact":
        torch.testing.assert_close(ll.values, closed, rtol=0, atol=1e-4)
    else:  # one Rademacher probe: unbiased, but not the closed form
        assert not torch.allclose(ll.values, closed, atol=1e-3)


def test_hutchinson_log_likelihood_agrees_with_exact_on_a_tiny_image():
    """A random U-Net field on (1, 4, 4) images: the mean of 48 independent Hutchinson
    estimates of log p (each row repeated 48 times in one solve, so each copy gets its own
    k=2 Gaussian probes) lies within 5 standard errors of the exact-trace value, row by row
    (a two-sided miss has probability 6e-7 for a seeded draw; Student's t with 47 degrees of
    freedom: 1e-5), and the estimates do vary. The solves run at rtol = atol = 1e-5, so the
    solver's own error (the two divergences take different adaptive steps) stays far below
    the standard error (~0.1 nats): at 1e-3 it was not, and a CPU whose rounding changed the
    steps saw a 4-SE gap."""
    torch.manual_seed(0)
    field = VelocityUNet(_randomise_output(UNet(**TINY.unet_kwargs((1, 4, 4))), 0.03)).eval()
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    cfg = SolverConfig(rtol=1e-5, atol=1e-5, divergence="exact")
    exact = log_likelihood(field, x, standard_normal_log_prob, cfg)
    assert exact.kind == "exact"
    hutch = dataclasses.replace(cfg, divergence="hutchinson", probe="gaussian", n_probes=2)
    reps = 48
    ll = log_likelihood(field, x.repeat_interleave(reps, 0), standard_normal_log_prob, hutch)
    assert ll.kind == "estimate" and "hutchinson(gaussian,k=2)" in ll.estimator
    est = ll.values.reshape(3, reps).double()
    mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
    assert (se > 1e-3).all(), se  # a real estimator, not the exact trace
    assert ((mean - exact.values.double()).abs() < 5 * se).all(), (mean, exact.values, se)


@pytest.mark.parametrize("name", ["interflow", "cnf", "ddpm"])
def test_image_path_passes_the_plugin_contract(name):
    """The registry-wide contract checks each method on the first kind it supports (2-D
    vectors); here the image path with the same ``test_params``, on (3, 8, 8) images (192
    dimensions: the evaluation takes Hutchinson's estimator under ``auto``). The checkpoint
    round trip compares log-likelihoods of instances with different run seeds, hence other
    Hutchinson probes, so it cannot hold for an "estimate" (the lead's contract check needs
    the same probe seed for that)."""
    from bench.harness.running.check import check_method, synthetic_splits

    reg = Registry()
    checks = check_method(reg.get("method", name), splits=synthetic_splits("image", (3, 8, 8)),
                          registry=reg)
    names = {c.name for c in checks}
    assert {"instantiate", "step.gradients", "sample.shape", "log_prob.label"} <= names
    bad = {c.name: c.detail for c in checks if not c.ok and c.name != "state.round_trip"}
    assert not bad, bad
