"""DDPM noise-prediction networks eps_theta(x, t): Ho et al.'s U-Net and an MLP.

The U-Net follows Ho et al. 2020 (``diffusion_tf/models/unet.py``): a sinusoidal timestep
embedding through two dense layers (4 x base channels), residual blocks (group norm, swish,
3x3 conv, added time embedding, dropout), single-head self-attention at the listed
resolutions, stride-2 conv downsampling and nearest-neighbour + conv upsampling, with the
last conv of every block and of the output zero-initialised. CIFAR-10 (32x32): ``ch=128,
ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1`` gives Ho et
al.'s 35.7M parameters. Group norm uses 32 groups, or gcd(32, channels) for tiny widths.

The time input is a float index t (n,) in [0, T-1] (continuous values allowed). Flows
(InterFlow, the CNF) integrate v(t, x) with t in [0, 1]: `VelocityUNet` feeds the same
network the time ``time_scale * t`` (default 1000, the range of DDPM's indices that the
sinusoidal embedding's frequencies were chosen for). `build_unet` builds either from the
shared fields of `bench.science.unet_config.UNetParams`.

Sizes (parameters, measured by building each; 3 channels unless said):

    network (ch, ch_mult, res blocks, attention, image)           parameters
    tests: 8, (1, 2), 1, (4,), 8x8                                      45,259
    small CPU runs: 32, (1, 2, 2, 2), 2, (16,), 32x32                2,245,763
    Ho et al.'s CIFAR-10: 128, (1, 2, 2, 2), 2, (16,), 32x32        35,746,307
    MNIST default: 128, (1, 2, 2), 2, (16,), 28x28, 1 channel       24,515,585
    Flowers default: 128, (1, 1, 2, 3, 4), 2, (16,), 128x128        85,602,691
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api.errors import ConfigError
from bench.science.nets import ACTIVATIONS

__all__ = ["timestep_embedding", "UNet", "VelocityUNet", "EpsMLP", "build_unet"]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (n,) float times -> (n, dim), as in Ho et al. (max period 1e4)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / max(half - 1, 1)
                      * torch.arange(half, dtype=torch.float32, device=t.device))
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


def _init(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """Ho et al.'s default init: fan-average uniform variance scaling, zero bias."""
    nn.init.xavier_uniform_(module.weight, gain=math.sqrt(scale) if scale > 0 else 1.0)
    if scale == 0:
        nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(c_in), _norm(c_out)
        self.conv1 = _init(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.temb = _init(nn.Linear(temb_ch, c_out))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _init(nn.Conv2d(c_out, c_out, 3, padding=1), scale=0.0)
        self.skip = _init(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v = (_init(nn.Conv2d(ch, ch, 1)) for _ in range(3))
        self.proj_out = _init(nn.Conv2d(ch, ch, 1), scale=0.0)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(n, c, h * w)
        k = self.k(y).reshape(n, c, h * w)
        v = self.v(y).reshape(n, c, h * w)
        attn = torch.softmax(torch.einsum("nci,ncj->nij", q, k) * c**-0.5, dim=-1)
        out = torch.einsum("nij,ncj->nci", attn, v).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = _init(nn.Conv2d(ch, ch, 3, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # TF "SAME" padding for stride 2


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = _init(nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Ho et al.'s DDPM U-Net: (n, C, H, W) images and (n,) float times -> (n, C, H, W).

    Args:
        in_ch: image channels (output has the same number).
        resolution: H = W of the input; must be divisible by 2^(len(ch_mult) - 1).
        ch: base channels; ch_mult: multiplier per resolution level.
        num_res_blocks: residual blocks per level (the up path has one more).
        attn_resolutions: resolutions (e.g. (16,)) that get self-attention.
        dropout: dropout rate inside residual blocks.
    """

    def __init__(
        self, in_ch: int, resolution: int, ch: int = 128, ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2, attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if resolution % 2 ** (len(ch_mult) - 1):
            raise ConfigError(f"U-Net resolution {resolution} is not divisible by "
                             f"2^{len(ch_mult) - 1} (ch_mult={tuple(ch_mult)})")
        self.ch, temb_ch = ch, 4 * ch
        self.temb = nn.Sequential(_init(nn.Linear(ch, temb_ch)), nn.SiLU(),
                                  _init(nn.Linear(temb_ch, temb_ch)))
        self.conv_in = _init(nn.Conv2d(in_ch, ch, 3, padding=1))
        self.down = nn.ModuleList()
        hs_ch, c, res = [ch], ch, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResnetBlock(c, ch * mult, temb_ch, dropout))
                c = ch * mult
                if res in attn_resolutions:
                    self.down.append(AttnBlock(c))
                hs_ch.append(c)
            if level != len(ch_mult) - 1:
                self.down.append(Downsample(c))
                hs_ch.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResnetBlock(c, c, temb_ch, dropout), AttnBlock(c),
                                  ResnetBlock(c, c, temb_ch, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResnetBlock(c + hs_ch.pop(), ch * mult, temb_ch, dropout))
                c = ch * mult
                if res in attn_resolutions:
                    self.up.append(AttnBlock(c))
            if level != 0:
                self.up.append(Upsample(c))
                res *= 2
        self.norm_out = _norm(c)
        self.conv_out = _init(nn.Conv2d(c, in_ch, 3, padding=1), scale=0.0)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.temb(timestep_embedding(t.expand(x.shape[0]), self.ch).to(x.dtype))
        hs = [self.conv_in(x)]
        h = hs[-1]
        for block in self.down:
            if isinstance(block, AttnBlock):
                h = hs[-1] = block(h)  # attention refines the last skip in place
                continue
            h = block(h, temb) if isinstance(block, ResnetBlock) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        for block in self.up:
            if isinstance(block, ResnetBlock):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            elif isinstance(block, AttnBlock):
                h = block(h)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VelocityUNet(nn.Module):
    """v(t, x) for flows: the U-Net with DDPM's time embedding of ``time_scale * t``.

    Args:
        unet: the network, called as ``unet(x, time_scale * t)``.
        time_scale: maps flow time t in [0, 1] onto DDPM's index range (1000: [0, 1000]).
    """

    def __init__(self, unet: UNet, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.unet = unet
        self.time_scale = float(time_scale)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        """Args: t a scalar, (1,) or (n,) times in [0, 1]; x (n, C, H, W).
        Returns: (n, C, H, W)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        return self.unet(x, self.time_scale * t)


def build_unet(params, event_shape: tuple[int, ...], velocity: bool = False) -> nn.Module:
    """The U-Net of ``params`` (a `bench.science.unet_config.UNetParams`) for images of
    shape (C, H, W): the noise predictor eps(x, index), or with ``velocity`` the flow field
    v(t, x) (`VelocityUNet`)."""
    net = UNet(**params.unet_kwargs(tuple(event_shape)))
    return VelocityUNet(net) if velocity else net


class EpsMLP(nn.Module):
    """eps_theta(x, t) for flat data: (n, dim) and (n,) float times -> (n, dim).

    The sinusoidal time embedding goes through two dense layers and is added to every
    hidden layer: h <- act(W h + U temb).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...], activation: str,
                 time_embed_dim: int) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            valid = ', '.join(ACTIVATIONS)
            raise ConfigError(f"unknown activation {activation!r}; valid: {valid}")
        self.time_embed_dim = time_embed_dim
        self.act = ACTIVATIONS[activation]()
        self.temb = nn.Sequential(nn.Linear(time_embed_dim, time_embed_dim), nn.SiLU(),
                                  nn.Linear(time_embed_dim, time_embed_dim))
        sizes = [dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:],
                                                                    strict=True))
        self.temb_proj = nn.ModuleList(nn.Linear(time_embed_dim, h) for h in hidden)
        self.out = nn.Linear(sizes[-1], dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.temb(timestep_embedding(t.expand(x.shape[0]), self.time_embed_dim)
                         .to(x.dtype))
        h = x
        for layer, proj in zip(self.layers, self.temb_proj, strict=True):
            h = self.act(layer(h) + proj(temb))
        return self.out(h)
