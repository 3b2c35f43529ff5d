"""The write-up's steps as pure functions: the one place each is computed.

The operators call them (receive → call → emit), and so do the training recipes
(:mod:`training.pipeline`: calibration and evaluation replay them on cached model outputs) and the
benchmark. Inputs are arrays and typed settings (:class:`operators.lib.calibration.PipelineSettings`);
maps are H×W float32 probabilities on the source grid, masks H×W bool.

* :func:`expert_score`, :func:`classifier_score` — step 1/2 image-level scores;
* :func:`gate` — steps 1+2: the mean of the four scores against the threshold;
* :func:`refine` — step 3: union of expert masks → components → padded crops → refinement model;
* :func:`final_map` — step 4: Zones or Weighted blend of the four maps, then the lung prior.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from operators.lib.blending import gate_is_positive, lung_postprocess, weighted_blend, zones_blend
from operators.lib.calibration import PipelineSettings, ScoreCalibration
from operators.lib.components import Box, component_boxes, pad_box, refine_regions, union_mask
from operators.lib.settings import BlendMode, Preset


def expert_score(square_prob: np.ndarray, score: ScoreCalibration) -> float:
    """An expert's image-level opacity score from its map at the model's input size."""
    return score.probability(score.feature_of(square_prob))


def classifier_score(raw: float, score: ScoreCalibration) -> float:
    """The classifier's image-level opacity score from its own output."""
    return score.probability(raw)


@dataclass(frozen=True)
class GateOutcome:
    positive: bool
    mean_score: float
    threshold: float


def gate(scores: Sequence[float], threshold: float) -> GateOutcome:
    """Positive when the mean of the classifiers' scores is at or above ``threshold``."""
    positive, mean = gate_is_positive(scores, threshold)
    return GateOutcome(positive, mean, float(threshold))


def refinement_boxes(expert_maps: Sequence[np.ndarray], preset: Preset) -> list[Box]:
    """Step 3's crops: components of the union of the expert masks, largest first, padded."""
    shape = np.shape(expert_maps[0])
    union = union_mask(expert_maps, preset.mask_threshold)
    boxes = component_boxes(union, preset.max_components, min_area_px=int(preset.min_component_fraction * union.size))
    return [pad_box(b, shape, preset.crop_pad_fraction, int(preset.min_crop_fraction * min(shape))) for b in boxes]


def refine(image: np.ndarray, expert_maps: Sequence[np.ndarray], predict_square: Callable[[np.ndarray], np.ndarray],
           input_size_px: int, preset: Preset) -> tuple[np.ndarray, list[Box]]:
    """Step 3 for one image: (refined map, zero outside the crops; the padded crop boxes)."""
    boxes = refinement_boxes(expert_maps, preset)
    return refine_regions(image, boxes, predict_square, input_size_px), boxes


@dataclass(frozen=True)
class FinalMaps:
    prob_map: np.ndarray  # H×W float32, the final probability map
    opacity_mask: np.ndarray  # H×W bool, prob_map ≥ the preset's binary threshold
    blend_weights: dict[str, float]  # the Weighted blend's weights used (empty for Zones and negative studies)


def final_map(positive: bool, maps: Mapping[str, np.ndarray], lung_mask: np.ndarray, settings: PipelineSettings) -> FinalMaps:
    """Step 4 for one image.

    ``maps``: the three expert maps and the refined map by model name (the blend's four maps). A
    positive study blends them (Zones: the zone value of the number of maps marking a pixel;
    Weighted: the settings' weights, looked up by name) and gets the lung prior's positive-study
    passes; a negative study gets an empty map and the negative-study pass.
    """
    preset = settings.preset
    shape = np.shape(lung_mask)
    weights: dict[str, float] = {}
    if positive:
        if preset.blend is BlendMode.ZONES:
            blended = zones_blend(list(maps.values()), preset.zone_values, preset.mask_threshold)
        else:
            weights = {name: settings.blend_weights[name] for name in maps}
            blended = weighted_blend(list(maps.values()), list(weights.values()))
    else:
        blended = np.zeros(shape, dtype=np.float32)
    passes, background = preset.lung_prior.passes(positive, min(shape))
    final = lung_postprocess(blended, lung_mask, passes, background)
    return FinalMaps(final, final >= preset.binary_threshold, weights)
