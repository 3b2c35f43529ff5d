"""The settings types of steps 1–4: blend mode, lung prior, preset (the values live in ``app/presets.py``).

They live here, below ``app/``, because the step functions (:mod:`operators.lib.steps`), the
operators, the training recipes and the benchmark all take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from operators.lib.blending import LungPass


class BlendMode(str, Enum):
    """How the four segmentation maps are blended (write-up step 4)."""

    ZONES = "zones"
    WEIGHTED = "weighted"


@dataclass(frozen=True)
class LungPrior:
    """Lung post-processing values of one preset (write-up step 4, last paragraph)."""

    lung_value_positive: float
    lung_value_negative: float
    background_positive: float
    background_negative: float
    #: radius of the lung-mask dilation, as a fraction of the image's shorter side
    dilation_fraction: float = 0.02
    #: radius of the wide dilation used by the first pass on positive studies
    wide_dilation_fraction: float = 0.05

    def passes(self, positive: bool, shorter_side_px: int) -> tuple[list[LungPass], float]:
        """The passes and background value for a study, radii in pixels of this image."""
        radius = max(1, int(round(self.dilation_fraction * shorter_side_px)))
        wide = max(radius, int(round(self.wide_dilation_fraction * shorter_side_px)))
        if positive:
            return [LungPass(wide, self.lung_value_negative), LungPass(radius, self.lung_value_positive)], self.background_positive
        return [LungPass(radius, self.lung_value_negative)], self.background_negative


@dataclass(frozen=True)
class Preset:
    """One complete configuration of steps 1–4."""

    name: str
    description: str
    blend: BlendMode
    lung_prior: LungPrior
    #: Zones: value for 0, 1, 2, 3, 4 agreeing maps (ours; the write-up optimised them on its validation)
    zone_values: tuple[float, float, float, float, float] = (0.0, 0.35, 0.55, 0.75, 0.9)
    #: use the pack's calibrated ``calibration.zone_values`` (fitted on validation, as the write-up did) when present
    zone_values_from_calibration: bool = True
    #: gate threshold on the mean of the four scores; None = the manifest's calibration (default 0.5)
    gate_threshold: float | None = None
    #: an expert pixel "marks opacity" at or above this probability (Zones votes, step 3 union)
    mask_threshold: float = 0.5
    #: step 3: at most this many connected components are refined (largest first)
    max_components: int = 8
    #: step 3: components smaller than this fraction of the image are ignored
    min_component_fraction: float = 0.0005
    #: step 3: crop padding on each side, as a fraction of the component's size
    crop_pad_fraction: float = 0.15
    #: step 3: smallest crop side, as a fraction of the image's shorter side
    min_crop_fraction: float = 0.125
    #: final map ≥ this is the BINARY SEG's opacity segment
    binary_threshold: float = 0.5
    #: nnU-Net test-time mirroring. Off: on the reference pack it costs 2.3× model time for final-map
    #: Dice +0.004 and log-loss +0.002 (worse); docs/benchmark.md, "Trade-offs" (bench/tradeoffs.py)
    nnunet_mirroring: bool = False
    #: nnU-Net sliding-window step as a fraction of the patch (images are resized to one patch)
    nnunet_tile_step: float = 0.5
