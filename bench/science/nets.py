"""Time-dependent networks v(t, x) shared by the flow methods.

The same `net` / `hidden` / `activation` parameters build the same network in InterFlow
and in the MLE CNF, so a per-iteration comparison can use identical architectures:

- ``mlp``: x and t concatenated at the input, then an MLP (the InterFlow paper's choice);
- ``concat``: t concatenated to the input of every layer (FFJORD's ConcatLinear);
- ``concatsquash``: FFJORD's ConcatSquashLinear, (W x + b) * sigmoid(W_g t + b_g) + W_b t.

`ScaledTimeField` wraps any of them with a learned end time (the CNF's ``train_time``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.api.errors import ConfigError

__all__ = ["ACTIVATIONS", "NETS", "build_net", "count_parameters", "TimeNet",
           "ScaledTimeField"]

ACTIVATIONS = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


class ConcatLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in + 1, d_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.lin(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))


class ConcatSquashLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.hyper_gate = nn.Linear(1, d_out)
        self.hyper_bias = nn.Linear(1, d_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.lin(x) * torch.sigmoid(self.hyper_gate(t)) + self.hyper_bias(t)


LAYERS = {"concat": ConcatLinear, "concatsquash": ConcatSquashLinear}
NETS = ("mlp", "concat", "concatsquash")


class TimeNet(nn.Module):
    """v(t, x) for flat x of shape (n, dim); t a scalar, or one time per row of shape (n,)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], activation: str, net: str) -> None:
        super().__init__()
        if net not in NETS:
            raise ConfigError(f"unknown net {net!r}; valid: {', '.join(NETS)}")
        if activation not in ACTIVATIONS:
            valid = ', '.join(ACTIVATIONS)
            raise ConfigError(f"unknown activation {activation!r}; valid: {valid}")
        self.net, self.dim = net, dim
        sizes = [dim, *hidden, dim]
        if net == "mlp":
            layers: list[nn.Module] = []
            d_in = dim + 1
            for h in hidden:
                layers += [nn.Linear(d_in, h), ACTIVATIONS[activation]()]
                d_in = h
            layers.append(nn.Linear(d_in, dim))
            self.body = nn.Sequential(*layers)
        else:
            self.layers = nn.ModuleList(
                LAYERS[net](a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            self.act = ACTIVATIONS[activation]()

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        # one time for the batch -> (1, 1); one time per row -> (n, 1)
        t = t.reshape(1, 1) if t.numel() == 1 else t.reshape(-1, 1)
        if self.net == "mlp":
            return self.body(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class ScaledTimeField(nn.Module):
    """v(t, x) = T f(T t, x) with a learned end time T = s^2 (FFJORD's ``sqrt_end_time``):
    the flow of f over [0, T] reparametrised to [0, 1]."""

    def __init__(self, net: nn.Module, time_length: float) -> None:
        super().__init__()
        self.net = net
        self.sqrt_end_time = nn.Parameter(torch.tensor(math.sqrt(time_length)))

    def end_time(self) -> Tensor:
        return self.sqrt_end_time * self.sqrt_end_time

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        """Args: t scalar, x (n, dim). Returns (n, dim)."""
        big_t = self.end_time().to(x.dtype)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return big_t * self.net(big_t * t, x)


def build_net(dim: int, hidden: tuple[int, ...], activation: str, net: str) -> TimeNet:
    return TimeNet(dim, tuple(hidden), activation, net)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
