"""Calibration arithmetic against the app's own step functions, on synthetic predictions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from app.presets import get_preset
from operators.lib.calibration import SCORE_FEATURES, Calibration, ScoreCalibration, ScoreFeature, resolve
from training.calibrate import calibrate_scores, fit_logistic, gate_threshold_at_specificity, optimise_zones, zones_loss_function
from training.metrics import class_balanced_logloss, ece, reliability, roc_auc
from training.pipeline import Predictions, final_map, scores


def _predictions(n: int = 6, size: int = 48) -> Predictions:
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), bool)
    labels = np.array([1, 1, 1, 0, 0, -1][:n], np.int8)
    for i in range(n):
        if labels[i] == 1:
            masks[i, 10:25, 8:20] = True
    maps = np.clip(masks[:, None] * 0.7 + rng.random((n, 3, size, size)) * 0.45, 0, 1).astype(np.float16)
    lungs = np.zeros((n, size, size), bool)
    lungs[:, 6:40, 4:44] = True
    features = np.array([[[f.feature_of(maps[i, k].astype(np.float32)) for f in SCORE_FEATURES] for k in range(3)] for i in range(n)], np.float32)
    return Predictions(ids=[f"i{i}" for i in range(n)], classes=["c"] * n, labels=labels, masks=masks,
                       classifier_raw=np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.5], np.float32)[:n], expert_features=features,
                       expert_maps=maps, refined=maps[:, 0], lungs=lungs, images=np.zeros((n, size, size), np.uint8),
                       expert_names=["a", "b", "c"], refinement_name="r", classifier_name="k")


def _settings(pred: Predictions, threshold: float = 0.5, **calibration):
    return resolve(get_preset("zones"), Calibration(gate_threshold=threshold, **calibration), pred.map_names)


def test_zones_loss_matches_the_apps_final_map():
    pred = _predictions()
    settings = _settings(pred)
    loss = zones_loss_function(pred, settings)
    for values in [(0.0, 0.35, 0.55, 0.75, 0.9), (0.02, 0.1, 0.4, 0.8, 0.95)]:
        trial = replace(settings, preset=replace(settings.preset, zone_values=values))
        direct = np.mean([class_balanced_logloss(final_map(pred, i, trial)[0].prob_map, pred.masks[i])
                          for i in range(len(pred.ids)) if pred.labels[i] >= 0])
        assert abs(loss(values) - direct) < 1e-6


def test_optimised_zones_are_monotone_and_not_worse():
    pred = _predictions()
    settings = _settings(pred)
    values, best = optimise_zones(pred, settings)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert best <= zones_loss_function(pred, settings)(settings.preset.zone_values) + 1e-12


def test_pipeline_scores_are_the_apps_scores_under_a_calibration():
    pred = _predictions()
    area = ScoreCalibration(ScoreFeature.AREA, 0.5, slope=1.5, intercept=2.0)
    settings = _settings(pred, scores={"b": area, "k": ScoreCalibration(ScoreFeature.CLASSIFIER, 0.0, slope=2.0, intercept=-1.0)})
    table = scores(pred, settings)
    for i in range(len(pred.ids)):
        assert table[i, 2] == pytest.approx(area.probability(area.feature_of(pred.expert_maps[i, 1].astype(np.float32))), rel=1e-5)
        assert table[i, 1] == pytest.approx(SCORE_FEATURES[0].feature_of(pred.expert_maps[i, 0].astype(np.float32)), rel=1e-5)  # uncalibrated
        assert table[i, 0] == pytest.approx(1 / (1 + np.exp(-(2.0 * np.log(pred.classifier_raw[i] + 1e-4) - 1.0))), rel=1e-5)


def test_logistic_fit_recovers_a_known_model():
    rng = np.random.default_rng(1)
    x = rng.normal(size=4000)
    y = rng.random(4000) < 1 / (1 + np.exp(-(2.0 * x - 0.5)))
    slope, intercept = fit_logistic(x, y, l2=0.0)
    assert slope == pytest.approx(2.0, abs=0.2) and intercept == pytest.approx(-0.5, abs=0.15)


def test_score_calibration_keeps_the_feature_with_the_best_calib_auc():
    pred = _predictions()
    chosen, report = calibrate_scores(pred)
    for k, name in enumerate(pred.expert_names):
        aucs = report[name]["calib_auc_by_feature"]
        best = max(aucs.values())
        picked = chosen[name]
        assert aucs[f"{picked.feature.value}({picked.parameter})"] == best and picked.slope is not None
    assert chosen["k"].feature is ScoreFeature.CLASSIFIER


def test_gate_threshold_keeps_the_required_specificity():
    scores_ = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95])
    positive = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1], bool)
    free = gate_threshold_at_specificity(scores_, positive, 0.0)
    strict = gate_threshold_at_specificity(scores_, positive, 1.0)
    assert 0.35 < free <= 0.4  # Youden's best: every positive, one false positive
    assert 0.6 < strict <= 0.7  # no false positive allowed
    assert ((scores_ >= strict) & ~positive).sum() == 0


def test_metric_definitions_by_hand():
    truth = np.array([[True, False], [False, False]])
    prob = np.array([[0.5, 0.5], [0.0, 0.0]])
    expected = 0.5 * -np.log(0.5) + 0.5 * np.mean([-np.log(0.5), 0.0, 0.0])
    assert abs(class_balanced_logloss(prob, truth) - expected) < 1e-6
    assert abs(class_balanced_logloss(prob, np.zeros_like(truth)) - np.mean([-np.log(0.5)] * 2 + [0.0] * 2)) < 1e-6  # empty mask
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert abs(ece(reliability(np.array([0.2, 0.2, 0.9, 0.9]), np.array([0, 1, 1, 1]))) - (0.5 * 0.3 + 0.5 * 0.1)) < 1e-9
