"""FFJORD's own code (rtqichen/ffjord, pinned as the submodule ``submodules/ffjord``)
behind our plug-in interface, to compare our `cnf` with the original on the same data.

Training is the reference's: its ``ODEnet`` / ``ODEfunc`` / ``CNF`` / ``SequentialFlow``
(``lib/layers``, odeint_adjoint, Hutchinson probe per solve) and the loss and NFE counting
of its ``train_tabular.py``. The optimiser is the harness's (``FFJORD.optim``: Adam,
lr 1e-3, weight decay 0): the reference's own Adam (``lib/custom_optimizers.py``) is the
classic formulation of ``torch.optim.Adam`` (eps added to sqrt(v) before the bias
correction, i.e. eps / sqrt(1 - beta2^k) in torch's terms, a difference of order 1e-8), and
its weight decay does nothing: it calls the out-of-place ``p.data.add``, so the script's
``--weight_decay 1e-6`` is a no-op. Weight decay 0 therefore reproduces the reference.
Evaluation is the harness's: the trained chain is exposed as a velocity field in our time
convention (t=0 base, t=1 data), so the shared engine scores it exactly like `cnf`.

The code is loaded by path from ``submodules/ffjord`` (or the folder named by
``BENCH_FFJORD_DIR``, a checkout of the same commit outside this repository) under a
private module name, so its top-level ``datasets`` and ``lib`` packages are never imported
by name. Without it this plug-in is listed as unavailable with the instruction to run.
Importing this file only checks that the checkout is there; the reference code (and torch)
loads on first use, so listing and planning stay fast.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.api import FlowMethod, RunContext, Splits, at_least, non_negative, positive
from bench.api.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["FFJORD", "FFJORDParams", "ffjord_dir", "reference_layers", "velocity_class"]

SUBMODULE_MESSAGE = "submodule not checked out: run git submodule update --init submodules/ffjord"
PINNED_COMMIT = "994864ad0517db3549717c25170f9b71e96788b1"


def ffjord_dir() -> Path:
    """``BENCH_FFJORD_DIR`` if set, else the submodule folder of this repository."""
    env = os.environ.get("BENCH_FFJORD_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1] / "submodules" / "ffjord"


def _load_package(name: str, folder: Path) -> ModuleType:
    """Import the package in `folder` under the private module name `name`."""
    init = folder / "__init__.py"
    old = sys.modules.get(name)
    if old is not None and Path(getattr(old, "__file__", "")) == init:
        return old
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_ROOT = ffjord_dir()
if not (_ROOT / "lib" / "layers" / "cnf.py").is_file():
    raise ImportError(SUBMODULE_MESSAGE)


@functools.cache
def reference_layers() -> ModuleType:
    """The reference's ``lib/layers`` package, loaded (with torch) on first use."""
    module = _load_package("_bench_ffjord_layers", _ROOT / "lib" / "layers")
    # the reference's known warning, also raised in the adjoint (backward) solve, which the
    # harness runs: torch.tensor(t) on a tensor in ODEfunc.forward. Only for its modules.
    warnings.filterwarnings("ignore", message="To copy construct from a tensor",
                            module="_bench_ffjord_layers")
    return module


@dataclass
class FFJORDParams:
    """The flags of FFJORD's ``train_tabular.py`` under the names `cnf` uses, so that one
    ``--set`` reaches both (FFJORD's flag in brackets). Defaults are its MINIBOONE command,
    ``--nhidden 2 --hdim_factor 20 --num_blocks 1 --nonlinearity softplus --batch_size 1000
    --lr 1e-3``, with the script's other defaults.

    Attributes:
        net: [layer_type] any of the reference's (concatsquash, concat, ignore, hyper,
            squash, concat_v2, blend, concatcoord).
        hidden: [dims] widths; empty means ``n_hidden`` [nhidden] layers of ``hidden_mult``
            [hdim_factor] x data dimension.
        activation: [nonlinearity].
        num_blocks, time_length, train_T, residual: as the reference's flags, except that
            ``train_T`` defaults to false: the script's true has no effect at the pinned
            commit (``CNF.forward`` builds its time grid with ``torch.tensor([0.0, T])``,
            which detaches T, so T stays 1 and its parameter never gets a gradient); false
            trains identically, without a parameter that gets no gradient.
        divergence: [divergence_fn] hutchinson (approximate) | exact (brute_force).
        probe: gaussian | rademacher [rademacher].
        solver, train_atol, train_rtol, step_size: [solver, atol, rtol, step_size].

    [lr] and [weight_decay] are the harness's shared optimiser settings (see the module
    docstring for why the default weight decay is 0).
    """

    net: str = "concatsquash"
    hidden: tuple[int, ...] = field(default=(), metadata=at_least(1))
    hidden_mult: int = field(default=20, metadata=at_least(1))
    n_hidden: int = field(default=2, metadata=non_negative())
    activation: str = "softplus"
    num_blocks: int = field(default=1, metadata=at_least(1))
    time_length: float = field(default=1.0, metadata=positive())
    train_T: bool = False
    residual: bool = False
    divergence: Literal["hutchinson", "exact"] = "hutchinson"
    probe: Literal["gaussian", "rademacher"] = "gaussian"
    solver: str = "dopri5"
    train_atol: float = field(default=1e-8, metadata=positive())
    train_rtol: float = field(default=1e-6, metadata=positive())
    step_size: float = field(default=0.0, metadata=non_negative())
    batch_size: int = field(default=1000, metadata=at_least(1))

    def __post_init__(self) -> None:
        if self.divergence not in ("hutchinson", "exact"):
            raise ValueError("divergence must be hutchinson or exact")
        if self.probe not in ("gaussian", "rademacher"):
            raise ValueError("probe must be gaussian or rademacher")


@functools.cache
def velocity_class() -> type[nn.Module]:
    """`FFJORDVelocity`, defined on first use (it subclasses ``torch.nn.Module``)."""
    import torch
    from torch import nn

    class FFJORDVelocity(nn.Module):
        """FFJORD's chain of CNF blocks as one field v(t, x) on [0, 1], t=0 base, t=1 data.

        Block i of K (applied i-th to the data) integrates dz/ds = f_i(s, z) over s in
        [0, T_i] from its data side; it occupies t in [(K-1-i)/K, (K-i)/K] with
        s = T_i (1 - u), u = K t - (K-1-i), so v(t, x) = -K T_i f_i(s, x).
        """

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
            """Args: t scalar, x (n, dim). Returns (n, dim)."""
            blocks = self.model.chain
            k = len(blocks)
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            from_base = min(max(int(math.floor(float(t) * k)), 0), k - 1)
            cnf = blocks[k - 1 - from_base]
            end = (cnf.sqrt_end_time * cnf.sqrt_end_time).to(x.dtype)
            s = end * (1 - (t * k - from_base))
            odefunc = getattr(cnf.odefunc, "odefunc", cnf.odefunc)  # unwrap regularization
            f = odefunc.diffeq(s, x)
            if odefunc.residual:
                f = f - x
            return -k * end * f

    return FFJORDVelocity


class FFJORD(FlowMethod):
    """FFJORD reference implementation (submodules/ffjord) trained by its own code."""

    name = "ffjord"
    Params = FFJORDParams
    test_params = {
        "hidden": (16, 16), "batch_size": 64, "train_atol": 1e-5, "train_rtol": 1e-5,
    }
    likelihood = "exact"
    optim: ClassVar[dict[str, Any]] = {"lr": 1e-3, "weight_decay": 0.0}
    event_ranks = (1,)

    def __init__(self, params: FFJORDParams, splits: Splits, ctx: RunContext) -> None:
        import torch

        super().__init__(params, splits, ctx)
        if len(self.event_shape) != 1:
            raise ConfigError(self.supports("", self.event_shape))
        self.dim = splits.dim
        self.device = torch.device(ctx.device)
        p = params
        hidden = tuple(p.hidden) or (p.hidden_mult * self.dim,) * p.n_hidden
        try:
            blocks = [self._block(hidden) for _ in range(p.num_blocks)]
        except (KeyError, AssertionError) as e:
            raise ConfigError(f"ffjord: unsupported setting ({e!r})") from None
        self.model = reference_layers().SequentialFlow(blocks).to(self.device)
        self.v = velocity_class()(self.model)
        self._nfe_forward = 0

    def _block(self, hidden: tuple[int, ...]) -> nn.Module:
        """One CNF block as ``build_model_tabular`` + ``set_cnf_options`` make it."""
        p, lib = self.params, reference_layers()
        diffeq = lib.ODEnet(hidden_dims=hidden, input_shape=(self.dim,), strides=None,
                               conv=False, layer_type=p.net, nonlinearity=p.activation)
        divergence = "approximate" if p.divergence == "hutchinson" else "brute_force"
        odefunc = lib.ODEfunc(diffeq=diffeq, divergence_fn=divergence,
                                 residual=p.residual, rademacher=p.probe == "rademacher")
        cnf = lib.CNF(odefunc=odefunc, T=p.time_length, train_T=p.train_T,
                         regularization_fns=None, solver=p.solver)
        cnf.atol = cnf.test_atol = p.train_atol
        cnf.rtol = cnf.test_rtol = p.train_rtol
        if p.step_size:
            cnf.solver_options["step_size"] = p.step_size
        return cnf

    # -- the base density (t = 0) -------------------------------------------------------
    def base_sample(self, n: int) -> Tensor:
        import torch

        return torch.randn(n, self.dim).to(self.device)

    def velocity_field(self) -> nn.Module:
        return self.v

    # -- training (train_tabular.py's loop body) ------------------------------------------
    def count_nfe(self) -> int:
        odefunc = reference_layers().ODEfunc
        return int(sum(m.num_evals() for m in self.model.modules() if isinstance(m, odefunc)))

    def loss(self, batch: Tensor, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """The reference loss -mean log p(batch) on (b, dim) data, with ``nfe_forward``.
        The Hutchinson probes come from torch's global generator, as in the reference."""
        import torch

        x = batch.to(self.device, torch.get_default_dtype())
        with warnings.catch_warnings():
            # the reference's known warnings: torch.tensor(t), torch.tensor([0, T])
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            zero = torch.zeros(x.shape[0], 1).to(x)
            z, delta_logp = self.model(x, zero)
        logpz = (-0.5 * math.log(2 * math.pi) - z.pow(2) / 2).view(z.shape[0], -1)
        loss = -torch.mean(logpz.sum(1, keepdim=True) - delta_logp)
        self._nfe_forward = self.count_nfe()
        return loss, {"nfe_forward": float(self._nfe_forward)}

    def after_backward(self) -> dict[str, float]:
        """``nfe_backward`` (the adjoint's evaluations) and the first block's end time."""
        return {"nfe_backward": float(self.count_nfe() - self._nfe_forward),
                "end_time": float(self.model.chain[0].sqrt_end_time.detach() ** 2)}

    # -- state ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}
