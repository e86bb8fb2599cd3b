"""The U-Net settings shared by every method that models images, torch-free.

InterFlow, the CNF and DDPM build the same network (`bench.science.unet.UNet`) from the same
fields, so their ``Params`` inherit `UNetParams`; planning builds ``Params`` without importing
torch, so this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.api.domains import at_least, in_range
from bench.api.errors import ConfigError

__all__ = ["UNetParams", "default_ch_mult"]

#: Ho et al.'s multipliers by resolution (32: CIFAR-10; 256: LSUN/CelebA-HQ), Nichol and
#: Dhariwal's for 64, and the stochastic-interpolant Oxford Flowers 128 network for 128
#: (Albergo, Boffi and Vanden-Eijnden 2023, Table 3).
_CH_MULT = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def default_ch_mult(resolution: int) -> tuple[int, ...]:
    """Channel multipliers for an H x H image: the published ones for 32, 64, 128 and 256,
    else (1, 2, 2, 2) with levels dropped until H is divisible by 2^(levels - 1) and the
    lowest level is at least 4x4 (MNIST's 28: (1, 2, 2), levels 28, 14, 7; 8x8: (1, 2))."""
    if resolution in _CH_MULT:
        return _CH_MULT[resolution]
    mult = (1, 2, 2, 2)
    while len(mult) > 1 and (resolution % 2 ** (len(mult) - 1)
                             or resolution // 2 ** (len(mult) - 1) < 4):
        mult = mult[:-1]
    return mult


@dataclass
class UNetParams:
    """The image network (Ho et al.'s DDPM U-Net, `bench.science.unet.UNet`); vectors use
    each method's own network and ignore these fields.

    Attributes:
        unet_ch: base channels (128: Ho et al.'s CIFAR-10 network, 35.7M parameters).
        unet_ch_mult: channel multiplier per resolution level; None: `default_ch_mult` of
            the image height ((1, 2, 2) for 28x28, (1, 2, 2, 2) for 32x32, (1, 1, 2, 3, 4)
            for 128x128).
        unet_num_res_blocks: residual blocks per level.
        unet_attn_resolutions: resolutions with self-attention.
        dropout: dropout in the residual blocks.
    """

    unet_ch: int = field(default=128, metadata=at_least(1))
    unet_ch_mult: tuple[int, ...] | None = field(default=None, metadata=at_least(1))
    unet_num_res_blocks: int = field(default=2, metadata=at_least(1))
    unet_attn_resolutions: tuple[int, ...] = field(default=(16,), metadata=at_least(1))
    dropout: float = field(default=0.1, metadata=in_range(0, 1, hi_open=True))

    def __post_init__(self) -> None:
        if self.unet_ch_mult is not None and not self.unet_ch_mult:
            raise ValueError("unet_ch_mult must be a non-empty tuple of integers >= 1")

    def unet_kwargs(self, event_shape: tuple[int, ...]) -> dict:
        """Keyword arguments of `bench.science.unet.UNet` for images of shape (C, H, W)."""
        c, h, w = event_shape
        if h != w:
            raise ConfigError(f"the U-Net needs square images, got {h}x{w}")
        mult = self.unet_ch_mult or default_ch_mult(h)
        return {"in_ch": c, "resolution": h, "ch": self.unet_ch, "ch_mult": tuple(mult),
                "num_res_blocks": self.unet_num_res_blocks,
                "attn_resolutions": tuple(self.unet_attn_resolutions),
                "dropout": self.dropout}
