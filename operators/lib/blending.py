"""Steps 1–4 arithmetic: the gate, "Zones" and "Weighted" blends, the lung prior.

Every function is pure and works on H×W float32 probability maps in [0, 1] (``prob_map``) and H×W
bool masks (``mask``). Hand-checkable cases live in ``tests/unit/test_blending.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: An expert's pixel counts as "marking opacity" at or above this probability (Zones, union).
MASK_THRESHOLD = 0.5


def gate_is_positive(scores: Sequence[float], threshold: float) -> tuple[bool, float]:
    """The study is positive when the mean of the classifiers' scores is at or above ``threshold``.

    Returns (positive, mean score).
    """
    if len(scores) == 0:
        raise ValueError("The gate needs at least one score.")
    mean = float(np.mean(np.asarray(scores, dtype=np.float64)))
    return mean >= threshold, mean


def zones_blend(prob_maps: Sequence[np.ndarray], zone_values: Sequence[float], threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """"Zones": each pixel gets ``zone_values[k]`` where ``k`` maps mark it (prob ≥ ``threshold``).

    ``zone_values`` has ``len(prob_maps) + 1`` entries: index 0 for pixels no model marks.
    """
    if len(zone_values) != len(prob_maps) + 1:
        raise ValueError(f"Zones needs {len(prob_maps) + 1} values for {len(prob_maps)} maps; got {len(zone_values)}.")
    votes = np.zeros(np.shape(prob_maps[0]), dtype=np.int64)
    for prob_map in prob_maps:
        votes += np.asarray(prob_map) >= threshold
    return np.asarray(zone_values, dtype=np.float32)[votes]


def weighted_blend(prob_maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ w_i · p_i with weights that sum to 1 (see :func:`operators.lib.calibration.blend_weights_from_logloss`)."""
    if len(weights) != len(prob_maps):
        raise ValueError(f"{len(prob_maps)} maps need {len(prob_maps)} weights; got {len(weights)}.")
    if not np.isclose(float(np.sum(weights)), 1.0, atol=1e-6):
        raise ValueError(f"Blend weights must sum to 1; they sum to {float(np.sum(weights)):.6f}.")
    out = np.zeros(np.shape(prob_maps[0]), dtype=np.float32)
    for weight, prob_map in zip(weights, prob_maps):
        out += np.float32(weight) * np.asarray(prob_map, dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def distance_to_mask(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest mask pixel (0 inside; inf if the mask is empty)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    return ndimage.distance_transform_edt(~mask).astype(np.float32)


def dilate_mask(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation by a disc of ``radius_px`` pixels (x² + y² ≤ r²); 0 returns a copy.

    Computed with a Euclidean distance transform: linear in the image size whatever the radius.
    """
    return distance_to_mask(mask) <= radius_px


@dataclass(frozen=True)
class LungPass:
    """One lung post-processing pass: inside the lung mask dilated by ``dilation_px``, raise to ``value``."""

    dilation_px: int
    value: float


def lung_postprocess(prob_map: np.ndarray, lung_mask: np.ndarray, passes: Sequence[LungPass], background: float) -> np.ndarray:
    """Raise probabilities with a lung prior: ``max(p, background)`` everywhere, then for each pass
    ``max(p, value)`` inside the lung mask dilated by that pass's radius.

    Passes apply in order; since each only raises values, the result is the pixel-wise maximum.
    """
    out = np.maximum(np.asarray(prob_map, dtype=np.float32), np.float32(background))
    distance = distance_to_mask(lung_mask)
    for lung_pass in passes:
        region = distance <= lung_pass.dilation_px
        out = np.where(region, np.maximum(out, np.float32(lung_pass.value)), out)
    return out.astype(np.float32)
