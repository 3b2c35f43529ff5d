"""Step 3 geometry: union of expert masks → connected components → padded crops → paste back.

Boxes are (top, left, bottom, right) in full-resolution pixel coordinates, bottom/right exclusive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from operators.lib.preprocessing import resize


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels; ``bottom`` and ``right`` are exclusive."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.bottom, self.right]


def union_mask(prob_maps: Sequence[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Pixels that any expert marks (probability ≥ ``threshold``)."""
    out = np.zeros(np.shape(prob_maps[0]), dtype=bool)
    for prob_map in prob_maps:
        out |= np.asarray(prob_map) >= threshold
    return out


def component_boxes(mask: np.ndarray, max_components: int, min_area_px: int = 1) -> list[Box]:
    """Bounding boxes of the 8-connected components of ``mask``, largest first, at most ``max_components``
    (equal areas: in label order, i.e. raster order of each component's first pixel).

    Components smaller than ``min_area_px`` are dropped. Only the kept components' boxes are computed:
    a noisy mask has thousands of components, and boxing them all cost 0.05 s per 1024² mask.
    """
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    kept = order[areas[order] >= min_area_px][: max(0, int(max_components))]
    if kept.size == 0:
        return []
    # relabel the kept components 1..k in their order, everything else 0, then box them in one pass
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[kept + 1] = np.arange(1, kept.size + 1, dtype=np.int32)
    return [Box(rows.start, cols.start, rows.stop, cols.stop) for rows, cols in ndimage.find_objects(relabel[labels])]


def pad_box(box: Box, shape_hw: tuple[int, int], pad_fraction: float, min_side_px: int) -> Box:
    """Grow ``box`` by ``pad_fraction`` of its size on each side, to at least ``min_side_px`` per side
    where the image allows, clipped to the image."""
    rows, cols = shape_hw

    def grow(start: int, stop: int, limit: int) -> tuple[int, int]:
        size = stop - start
        target = max(int(round(size * (1 + 2 * pad_fraction))), min(min_side_px, limit))
        extra = target - size
        new_start = start - extra // 2
        new_stop = new_start + target
        if new_start < 0:
            new_start, new_stop = 0, target
        if new_stop > limit:
            new_start, new_stop = max(0, limit - target), limit
        return new_start, new_stop

    top, bottom = grow(box.top, box.bottom, rows)
    left, right = grow(box.left, box.right, cols)
    return Box(top, left, bottom, right)


def refine_regions(
    image: np.ndarray,
    boxes: Sequence[Box],
    predict_crop: Callable[[np.ndarray], np.ndarray],
    crop_size_px: int,
) -> np.ndarray:
    """Crop each box from the full-resolution ``image``, resize to ``crop_size_px``², run
    ``predict_crop`` (square image → square prob map), resize back and paste into a zero H×W map.

    Overlapping boxes keep the pixel-wise maximum. Pixels outside every box stay 0.
    """
    refined = np.zeros(image.shape, dtype=np.float32)
    for box in boxes:
        crop = image[box.top : box.bottom, box.left : box.right]
        crop_prob = predict_crop(resize(crop, (crop_size_px, crop_size_px)))
        back = np.clip(resize(crop_prob, (box.height, box.width)), 0.0, 1.0)
        view = refined[box.top : box.bottom, box.left : box.right]
        np.maximum(view, back, out=view)
    return refined
