"""Every behaviour knob of the pipeline, in one place.

The write-up (``shared/spec/method.txt``) ends with three submissions; each is a named preset here:

==========  ==========  =================================  =================================
preset      blend       lung value (positive / negative)   background (positive / negative)
==========  ==========  =================================  =================================
zones       Zones       0.30 / 0.10                        0.05 / 0.05   (Submission 1)
weighted    Weighted    0.30 / 0.10                        0.05 / 0.05   (Submission 2)
zones-low   Zones       0.15 / 0.05                        0.05 / 0.00   (Submission 3)
==========  ==========  =================================  =================================

Our reading of "we run this twice with different values for the lung pixels": a positive study
gets the lung prior twice — first the negative-study value inside a wide dilation of the lung mask
(``wide_dilation_fraction``), then the positive-study value inside the plain dilation
(``dilation_fraction``) — so probabilities step down smoothly towards the lung border. A negative
study gets one pass at the negative-study value. Values not given by the write-up (zone values,
dilation radii, gate threshold) are ours and say so; calibration (``models/manifest.json``) supplies
the gate threshold, the Weighted blend weights and the Zones values (which replace the defaults
below when the pack has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


_SUBMISSION_1_LUNGS = LungPrior(lung_value_positive=0.3, lung_value_negative=0.1, background_positive=0.05, background_negative=0.05)
_SUBMISSION_3_LUNGS = LungPrior(lung_value_positive=0.15, lung_value_negative=0.05, background_positive=0.05, background_negative=0.0)

PRESETS: dict[str, Preset] = {
    "zones": Preset(
        name="zones",
        description="Submission 1: Zones blend, higher lung values (0.3 positive, 0.1 negative, background 0.05).",
        blend=BlendMode.ZONES,
        lung_prior=_SUBMISSION_1_LUNGS,
    ),
    "weighted": Preset(
        name="weighted",
        description="Submission 2: Weighted blend (1 / weighted log-loss), lung values as Submission 1.",
        blend=BlendMode.WEIGHTED,
        lung_prior=_SUBMISSION_1_LUNGS,
    ),
    "zones-low": Preset(
        name="zones-low",
        description="Submission 3: Zones blend, lower lung values (0.15 positive, 0.05 negative; background 0.05 positive, 0 negative).",
        blend=BlendMode.ZONES,
        lung_prior=_SUBMISSION_3_LUNGS,
    ),
}
DEFAULT_PRESET = "zones"


def get_preset(name: str, **overrides: object) -> Preset:
    """The preset called ``name``, with optional field overrides (e.g. ``nnunet_mirroring=True``)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    unknown = sorted(set(overrides) - set(Preset.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Unknown preset field(s) {unknown}; valid fields: {sorted(Preset.__dataclass_fields__)}.")
    return replace(preset, **overrides) if overrides else preset


@dataclass(frozen=True)
class RunSettings:
    """Where and how the models run (not part of a preset: the same preset runs anywhere)."""

    device: str = "cpu"
    #: torch intra-op threads; 0 = leave torch's default (one per core)
    threads: int = 0
    extra: dict[str, str] = field(default_factory=dict)
