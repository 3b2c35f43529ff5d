"""ConvNeXt-FPN: a timm ConvNeXt trunk (``features_only``) with a Feature Pyramid Network head.

The trunk can be initialised from a local open_clip ConvNeXt CLIP checkpoint (its ``visual.trunk.*``
weights, see :func:`load_clip_trunk_weights`); the app loads the whole trained model from
``model.safetensors``. Input: B×3×S×S, the histogram-equalised greyscale image repeated on three
channels and normalised with the config's mean/std. Output: B×1×S×S opacity logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

#: open_clip / OpenAI CLIP image normalisation, used by CLIP-initialised trunks.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ConvNextFpnConfig:
    """Everything needed to rebuild the network; stored as ``config.json`` beside the weights."""

    trunk: str = "convnext_base"
    trunk_kwargs: dict = field(default_factory=dict)
    fpn_channels: int = 256
    input_size_px: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    histogram_equalized: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ConvNextFpnConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown ConvNeXt-FPN config key(s) {unknown}.")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


class ConvNextFpn(nn.Module):
    """ConvNeXt trunk → FPN (lateral 1×1, top-down sum, 3×3 smoothing) → merged stride-4 head."""

    def __init__(self, config: ConvNextFpnConfig):
        super().__init__()
        self.config = config
        self.trunk = timm.create_model(config.trunk, pretrained=False, features_only=True, **config.trunk_kwargs)
        channels = self.trunk.feature_info.channels()
        width = config.fpn_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, kernel_size=3, padding=1) for _ in channels)
        self.head = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.GroupNorm(num_groups=min(32, width), num_channels=width),
            nn.GELU(),
            nn.Conv2d(width, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.trunk(x)
        pyramid = [lateral(f) for lateral, f in zip(self.lateral, features)]
        for level in range(len(pyramid) - 2, -1, -1):
            pyramid[level] = pyramid[level] + F.interpolate(pyramid[level + 1], size=pyramid[level].shape[-2:], mode="nearest")
        finest = pyramid[0].shape[-2:]
        merged = sum(
            F.interpolate(smooth(p), size=finest, mode="bilinear", align_corners=False) if i else smooth(p)
            for i, (smooth, p) in enumerate(zip(self.smooth, pyramid))
        )
        logits = self.head(merged)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def load_clip_trunk_weights(model: ConvNextFpn, checkpoint: Path) -> list[str]:
    """Copy an open_clip ConvNeXt checkpoint's ``visual.trunk.*`` weights into ``model.trunk``.

    Returns the trunk keys that the checkpoint did not provide (should be empty). Used by training;
    the app never needs the CLIP checkpoint.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    trunk_state = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("visual.trunk."):
            name = key[len("visual.trunk.") :]
            # features_only flattens the first level: stem.0 -> stem_0, stages.1 -> stages_1
            parts = name.split(".", 2)
            if parts[0] in ("stem", "stages") and len(parts) > 1:
                name = f"{parts[0]}_{parts[1]}" + (f".{parts[2]}" if len(parts) > 2 else "")
            trunk_state[name] = value
    if not trunk_state:
        raise ValueError(f"{checkpoint}: no 'visual.trunk.*' weights; is this an open_clip ConvNeXt checkpoint?")
    result = model.trunk.load_state_dict(trunk_state, strict=False)
    return list(result.missing_keys)
