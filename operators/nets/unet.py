"""A small U-Net: the project's light lung segmenter (and a baseline for the training recipes).

Input B×1×S×S in [0, 1]; output B×C×S×S logits. Stored as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Rebuild recipe for :class:`SmallUNet`, stored as ``config.json``."""

    base_channels: int = 16
    depth: int = 4
    out_channels: int = 1
    input_size_px: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown U-Net config key(s) {unknown}.")
        return cls(**data)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Classic U-Net with ``depth`` poolings and channel doubling from ``base_channels``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_block(1, widths[0])] + [_block(widths[i], widths[i + 1]) for i in range(config.depth)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(config.depth)))
        self.merge = nn.ModuleList(_block(widths[i] * 2, widths[i]) for i in reversed(range(config.depth)))
        self.out = nn.Conv2d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = up(x)
            skip = skips.pop()
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = merge(torch.cat([x, skip], dim=1))
        return self.out(x)
