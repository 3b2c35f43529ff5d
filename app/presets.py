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

from dataclasses import replace

from operators.lib.settings import BlendMode, LungPrior, Preset

__all__ = ["BlendMode", "LungPrior", "Preset", "PRESETS", "DEFAULT_PRESET", "get_preset"]

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
