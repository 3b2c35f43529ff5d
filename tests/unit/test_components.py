"""Step 3 geometry: components, padding, crop → predict → paste round trip."""

import numpy as np
import pytest
from scipy import ndimage

from operators.lib.components import Box, component_boxes, pad_box, refine_regions, union_mask


def test_union_of_expert_masks():
    a = np.array([[0.6, 0.1], [0.1, 0.1]])
    b = np.array([[0.1, 0.1], [0.1, 0.7]])
    np.testing.assert_array_equal(union_mask([a, b]), [[True, False], [False, True]])


def test_components_largest_first_and_capped():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:15, 10:16] = True  # 30 px
    mask[5, 18] = True  # 1 px
    boxes = component_boxes(mask, max_components=2)
    assert boxes == [Box(10, 10, 15, 16), Box(1, 1, 3, 3)]
    assert component_boxes(mask, max_components=5, min_area_px=2) == [Box(10, 10, 15, 16), Box(1, 1, 3, 3)]
    assert component_boxes(np.zeros((4, 4), bool), 3) == []


def test_pad_box_grows_and_stays_inside_the_image():
    assert pad_box(Box(10, 10, 20, 20), (100, 100), pad_fraction=0.5, min_side_px=0) == Box(5, 5, 25, 25)
    assert pad_box(Box(0, 0, 4, 4), (100, 100), pad_fraction=0.0, min_side_px=16) == Box(0, 0, 16, 16)
    assert pad_box(Box(90, 90, 100, 100), (100, 100), pad_fraction=1.0, min_side_px=0) == Box(70, 70, 100, 100)


def test_crop_paste_round_trip_with_identity_model():
    image = np.zeros((64, 80), dtype=np.float32)
    image[20:30, 40:60] = 1.0
    boxes = [Box(16, 36, 34, 64)]
    refined = refine_regions(image, boxes, predict_crop=lambda crop: crop, crop_size_px=32)
    inside = refined[16:34, 36:64]
    # identity model: the pasted crop reproduces the image inside the box (up to resize blur at edges)
    assert np.abs(inside - image[16:34, 36:64]).mean() < 0.05
    assert refined[:16].max() == 0 and refined[:, :36].max() == 0  # nothing outside the box


def test_overlapping_crops_keep_the_maximum():
    image = np.zeros((40, 40), dtype=np.float32)
    constant = iter([0.3, 0.8])
    refined = refine_regions(image, [Box(0, 0, 20, 20), Box(10, 10, 30, 30)],
                             predict_crop=lambda crop: np.full(crop.shape, next(constant), np.float32), crop_size_px=16)
    assert refined[5, 5] == np.float32(0.3)
    assert refined[15, 15] == np.float32(0.8)
    assert refined[25, 25] == np.float32(0.8)


def test_thresholds_are_inclusive_and_single_pixels_count():
    """Boundaries: a map exactly at the threshold is marked; a one-pixel component is a component
    (the default minimum area is one pixel); a mask with a single component yields its box."""
    at = np.zeros((6, 6), np.float32)
    at[2, 3] = 0.5
    assert union_mask([at, np.zeros_like(at)], 0.5)[2, 3] and union_mask([at], 0.5).sum() == 1
    assert union_mask([np.zeros_like(at), at], 0.5)[2, 3]  # the second map counts too
    single = np.zeros((6, 6), bool)
    single[4, 1] = True
    assert [b.as_list() for b in component_boxes(single, 3)] == [[4, 1, 5, 2]]
    assert component_boxes(np.zeros((6, 6), bool), 3) == []


def test_components_are_eight_connected_and_ties_keep_label_order():
    """Diagonal neighbours are one component; among equal areas the first in raster order wins the
    last place (more than 16 components: numpy's default sort is not stable there)."""
    diagonal = np.zeros((4, 4), bool)
    diagonal[0, 0] = diagonal[1, 1] = diagonal[2, 2] = True
    assert component_boxes(diagonal, 5) == [Box(0, 0, 3, 3)]
    row = np.zeros((1, 60), bool)
    for k in range(20):  # left to right: 1 px, 2 px, 1 px, 2 px, …
        row[0, 3 * k : 3 * k + 1 + k % 2] = True
    boxes = component_boxes(row, max_components=11)
    assert boxes == [Box(0, 3 * k, 1, 3 * k + 2) for k in range(1, 20, 2)] + [Box(0, 0, 1, 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_of_a_noisy_mask_match_every_component_boxed(seed):
    """Only the kept components are boxed (a noisy mask has thousands): the boxes, their order and the
    cap are those of boxing every component with ``find_objects`` and sorting by area."""
    mask = np.random.default_rng(seed).random((300, 257)) > 0.62
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel())[1:]
    every = [Box(r.start, c.start, r.stop, c.stop) for r, c in ndimage.find_objects(labels)]
    by_area = [every[i] for i in np.argsort(-areas, kind="stable") if areas[i] >= 3]
    assert len(every) > 1000 and len(by_area) > 8
    assert component_boxes(mask, 8, min_area_px=3) == by_area[:8]
    assert component_boxes(mask, 10**6, min_area_px=3) == by_area


def test_pad_box_wider_than_the_image_is_the_whole_image():
    assert pad_box(Box(0, 0, 100, 80), (100, 80), pad_fraction=0.5, min_side_px=0) == Box(0, 0, 100, 80)
    assert pad_box(Box(40, 10, 60, 70), (100, 80), pad_fraction=1.0, min_side_px=0) == Box(20, 0, 80, 80)


def test_pasted_crops_are_float32_probabilities_whatever_the_model_returns():
    image = np.zeros((40, 40), dtype=np.float32)
    refined = refine_regions(image, [Box(0, 0, 20, 20), Box(20, 20, 40, 40)],
                             predict_crop=lambda crop: np.full(crop.shape, 1.5, np.float32), crop_size_px=16)
    assert refined.dtype == np.float32
    assert refined[:20, :20].min() == refined[20:, 20:].max() == 1.0 and refined[:20, 20:].max() == 0.0
