"""Step arithmetic on small hand-checkable cases."""

import numpy as np
import pytest

from app.presets import PRESETS, get_preset
from operators.lib.blending import LungPass, dilate_mask, gate_is_positive, lung_postprocess, weighted_blend, zones_blend
from operators.lib.calibration import ScoreCalibration, ScoreFeature, blend_weights_from_logloss


def test_zones_blend_gives_the_value_of_each_overlap_count():
    maps = [np.array([[0.9, 0.9, 0.9, 0.9, 0.1]]), np.array([[0.9, 0.9, 0.9, 0.1, 0.1]]),
            np.array([[0.9, 0.9, 0.1, 0.1, 0.1]]), np.array([[0.9, 0.1, 0.1, 0.1, 0.1]])]
    out = zones_blend(maps, (0.0, 0.25, 0.5, 0.75, 1.0))
    np.testing.assert_allclose(out, [[1.0, 0.75, 0.5, 0.25, 0.0]])
    assert out.dtype == np.float32


def test_zones_blend_counts_a_pixel_at_exactly_the_threshold():
    out = zones_blend([np.array([[0.5]]), np.array([[0.4999]])], (0.0, 0.6, 0.9))
    assert out[0, 0] == pytest.approx(0.6)


def test_zones_blend_rejects_a_wrong_number_of_values():
    with pytest.raises(ValueError, match="needs 3 values for 2 maps"):
        zones_blend([np.zeros((2, 2)), np.zeros((2, 2))], (0.0, 1.0))


def test_weights_are_inverse_logloss_normalised():
    weights = blend_weights_from_logloss([0.5, 0.25, 1.0])
    # 1/0.5=2, 1/0.25=4, 1/1=1 → 2/7, 4/7, 1/7
    np.testing.assert_allclose(weights, [2 / 7, 4 / 7, 1 / 7])


def test_weights_reject_nonpositive_logloss():
    with pytest.raises(ValueError, match="finite and positive"):
        blend_weights_from_logloss([0.5, 0.0])


def test_weighted_blend_is_the_weighted_sum():
    maps = [np.full((2, 2), 0.2), np.full((2, 2), 0.8)]
    out = weighted_blend(maps, [0.25, 0.75])
    np.testing.assert_allclose(out, np.full((2, 2), 0.2 * 0.25 + 0.8 * 0.75), rtol=1e-6)


def test_weighted_blend_rejects_weights_not_summing_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        weighted_blend([np.zeros((1, 1))] * 2, [0.5, 0.6])


def test_gate_uses_the_mean_of_the_scores():
    assert gate_is_positive([0.2, 0.4, 0.6, 0.8], 0.5) == (True, pytest.approx(0.5))
    assert gate_is_positive([0.2, 0.4, 0.6, 0.7], 0.5)[0] is False


def test_top_mean_feature_is_the_mean_of_the_top_percent():
    top = ScoreCalibration(ScoreFeature.TOP_MEAN, 0.01)
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[0, 0] = 1.0  # top 1% of 100 pixels = 1 pixel
    assert top.feature_of(prob) == pytest.approx(1.0)
    prob = np.zeros((20, 20), dtype=np.float32)
    prob[0, 0], prob[0, 1], prob[0, 2], prob[0, 3] = 1.0, 0.5, 0.5, 0.2  # top 4 of 400
    assert top.feature_of(prob) == pytest.approx((1.0 + 0.5 + 0.5 + 0.2) / 4)
    assert ScoreCalibration(ScoreFeature.TOP_MEAN, 0.05).feature_of(prob) == pytest.approx(2.2 / 20)


def test_area_feature_counts_pixels_at_or_above_its_threshold():
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[0, :5] = [0.5, 0.49, 0.8, 0.9, 1.0]
    assert ScoreCalibration(ScoreFeature.AREA, 0.5).feature_of(prob) == pytest.approx(4 / 100)
    assert ScoreCalibration(ScoreFeature.AREA, 0.8).feature_of(prob) == pytest.approx(3 / 100)


def test_score_logistic_map_by_hand():
    score = ScoreCalibration(ScoreFeature.AREA, 0.5, slope=2.0, intercept=1.0, offset=0.01)
    z = 2.0 * np.log(0.04 + 0.01) + 1.0
    assert score.probability(0.04) == pytest.approx(1 / (1 + np.exp(-z)))
    assert ScoreCalibration(ScoreFeature.AREA, 0.5).probability(0.04) == pytest.approx(0.04)  # uncalibrated: the raw feature
    assert score.probability(0.0) < score.probability(0.01) < score.probability(0.5) < 1.0  # monotone


def test_dilation_grows_a_point_into_a_disc():
    mask = np.zeros((7, 7), dtype=bool)
    mask[3, 3] = True
    out = dilate_mask(mask, 2)
    assert out.sum() == 13  # disc of radius 2: 1 + 4 + 8
    assert out[3, 1] and out[1, 3] and not out[1, 1]
    assert dilate_mask(mask, 0).sum() == 1


def test_lung_postprocess_raises_lungs_and_background():
    prob = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.9]], dtype=np.float32)
    lung = np.array([[False, False, True, False, False, False]])
    out = lung_postprocess(prob, lung, [LungPass(2, 0.1), LungPass(0, 0.3)], background=0.05)
    # background 0.05; dilation 2 around index 2 covers 0..4 → 0.1; lung pixel itself 0.3; 0.9 kept
    np.testing.assert_allclose(out, [[0.1, 0.1, 0.3, 0.1, 0.1, 0.9]])


def test_submission_presets_have_the_write_up_values():
    s1, s2, s3 = PRESETS["zones"], PRESETS["weighted"], PRESETS["zones-low"]
    assert (s1.blend.value, s2.blend.value, s3.blend.value) == ("zones", "weighted", "zones")
    assert (s1.lung_prior.lung_value_positive, s1.lung_prior.lung_value_negative) == (0.3, 0.1)
    assert (s1.lung_prior.background_positive, s1.lung_prior.background_negative) == (0.05, 0.05)
    assert s2.lung_prior == s1.lung_prior
    assert (s3.lung_prior.lung_value_positive, s3.lung_prior.lung_value_negative) == (0.15, 0.05)
    assert (s3.lung_prior.background_positive, s3.lung_prior.background_negative) == (0.05, 0.0)


def test_lung_prior_passes_for_positive_and_negative_studies():
    prior = PRESETS["zones"].lung_prior
    passes, background = prior.passes(positive=True, shorter_side_px=1000)
    assert [(p.dilation_px, p.value) for p in passes] == [(50, 0.1), (20, 0.3)] and background == 0.05
    passes, background = PRESETS["zones-low"].lung_prior.passes(positive=False, shorter_side_px=1000)
    assert [(p.dilation_px, p.value) for p in passes] == [(20, 0.05)] and background == 0.0


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="Choose one of: zones, weighted, zones-low"):
        get_preset("submission-4")


def test_dilation_by_distance_equals_dilation_by_a_disc_structure():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    mask = rng.random((60, 70)) > 0.995
    for radius in (1, 3, 7):
        y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
        expected = ndimage.binary_dilation(mask, structure=x * x + y * y <= radius * radius)
        np.testing.assert_array_equal(dilate_mask(mask, radius), expected)
    assert not dilate_mask(np.zeros((5, 5), bool), 3).any()


def test_weighted_blend_and_gate_refuse_mismatched_inputs_and_clip():
    """The argument checks (each a survivor of the last mutation run) and the clip to [0, 1]."""
    with pytest.raises(ValueError, match="2 maps need 2 weights; got 3"):
        weighted_blend([np.zeros((1, 1))] * 2, [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="sum to 0.999000"):
        weighted_blend([np.zeros((1, 1))] * 2, [0.5, 0.499])
    assert weighted_blend([np.ones((1, 1))] * 2, [0.5, 0.5 + 5e-7]).max() == 1.0  # within tolerance, clipped
    with pytest.raises(ValueError, match="at least one score"):
        gate_is_positive([], 0.5)
    assert gate_is_positive([0.5], 0.5) == (True, 0.5)  # at the threshold is positive


def test_a_single_map_blends_to_its_own_zones_or_itself():
    one = np.array([[0.2, 0.7]], np.float32)
    np.testing.assert_array_equal(zones_blend([one], (0.1, 0.9)), [[np.float32(0.1), np.float32(0.9)]])
    np.testing.assert_array_equal(weighted_blend([one], [1.0]), one)


def test_weighted_blend_is_float32_in_0_1_whatever_the_inputs():
    """float32 arithmetic (a float64 map gives what its float32 copy gives), negative weights clipped at 0,
    and weights summing to 1 within float32 rounding (1 + 1.05e-5: rtol 1e-5 plus atol 1e-6) accepted."""
    rng = np.random.default_rng(1)
    maps = [rng.random((8, 8)), rng.random((8, 8))]
    weights = [0.3, 0.7]
    out = weighted_blend(maps, weights)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, weighted_blend([m.astype(np.float32) for m in maps], weights))
    low = weighted_blend([np.zeros((1, 2)), np.array([[1.0, 0.0]])], [2.0, -1.0])
    np.testing.assert_array_equal(low, [[0.0, 0.0]])
    assert weighted_blend([np.full((1, 1), 0.5)] * 2, [0.5, 0.5 + 1.05e-5])[0, 0] == pytest.approx(0.5, abs=1e-4)


def test_gate_mean_is_taken_in_float64():
    scores = np.array([0.1, 0.2, 0.7, 0.35], np.float32)
    positive, mean = gate_is_positive(scores, 0.5)
    assert mean == float(np.mean(scores.astype(np.float64)))


def test_distance_to_mask_is_float32_and_infinite_for_an_empty_mask():
    from operators.lib.blending import distance_to_mask

    empty = distance_to_mask(np.zeros((3, 4), bool))
    assert empty.dtype == np.float32 and np.isposinf(empty).all()
    point = np.zeros((3, 4), np.uint8)  # a 0/1 mask of another dtype means the same pixels
    point[1, 1] = 1
    distance = distance_to_mask(point)
    assert distance.dtype == np.float32
    np.testing.assert_array_equal(distance, distance_to_mask(point.astype(bool)))
    assert distance[1, 1] == 0.0 and distance[1, 3] == 2.0


def test_lung_postprocess_returns_float32():
    out = lung_postprocess(np.zeros((2, 2), np.float64), np.eye(2, dtype=bool), [LungPass(0, 0.3)], background=0.05)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.where(np.eye(2, dtype=bool), np.float32(0.3), np.float32(0.05)))


def test_score_calibration_edges():
    """Only a fitted map (slope and intercept) is applied; z is clamped to ±60 (the floor is σ(−60), not
    less); a map is read as float32, as the models give it (a float64 value rounding to the threshold counts)."""
    import math

    assert ScoreCalibration(ScoreFeature.AREA, 0.5, slope=2.0).probability(0.3) == 0.3  # no intercept: the raw feature
    fitted = ScoreCalibration(ScoreFeature.AREA, 0.5, slope=1.0, intercept=-1000.0, offset=1.0)
    assert fitted.probability(0.0) == 1.0 / (1.0 + math.exp(60.0))
    prob = np.zeros((1, 4), np.float64)
    prob[0, 0] = 0.49999999  # float32: 0.5
    assert ScoreCalibration(ScoreFeature.AREA, 0.5).feature_of(prob) == 0.25
