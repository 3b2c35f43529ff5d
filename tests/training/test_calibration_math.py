"""Calibration arithmetic against the app's own final-map computation, on synthetic predictions."""

from __future__ import annotations

import numpy as np

from app.presets import get_preset
from training.calibrate import optimise_zones, zones_loss_function
from training.metrics import class_balanced_logloss, ece, reliability, roc_auc
from training.pipeline import Predictions, final_map


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
    return Predictions(ids=[f"i{i}" for i in range(n)], classes=["c"] * n, labels=labels, masks=masks,
                       classifier=np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.5], np.float32)[:n], expert_scores=rng.random((n, 3)).astype(np.float32),
                       expert_maps=maps, refined=maps[:, 0], lungs=lungs, images=np.zeros((n, size, size), np.uint8),
                       expert_names=["a", "b", "c"], refinement_name="r")


def test_zones_loss_matches_the_apps_final_map():
    pred = _predictions()
    preset = get_preset("zones")
    loss = zones_loss_function(pred, 0.5)
    for values in [(0.0, 0.35, 0.55, 0.75, 0.9), (0.02, 0.1, 0.4, 0.8, 0.95)]:
        direct = np.mean([class_balanced_logloss(final_map(pred, i, preset, 0.5, zone_values=values)[0], pred.masks[i])
                          for i in range(len(pred.ids)) if pred.labels[i] >= 0])
        assert abs(loss(values) - direct) < 1e-6


def test_optimised_zones_are_monotone_and_not_worse():
    pred = _predictions()
    start = (0.0, 0.35, 0.55, 0.75, 0.9)
    values, best = optimise_zones(pred, 0.5, start)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert best <= zones_loss_function(pred, 0.5)(start) + 1e-12


def test_metric_definitions_by_hand():
    truth = np.array([[True, False], [False, False]])
    prob = np.array([[0.5, 0.5], [0.0, 0.0]])
    expected = 0.5 * -np.log(0.5) + 0.5 * np.mean([-np.log(0.5), 0.0, 0.0])
    assert abs(class_balanced_logloss(prob, truth) - expected) < 1e-6
    assert abs(class_balanced_logloss(prob, np.zeros_like(truth)) - np.mean([-np.log(0.5)] * 2 + [0.0] * 2)) < 1e-6  # empty mask
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert abs(ece(reliability(np.array([0.2, 0.2, 0.9, 0.9]), np.array([0, 1, 1, 1]))) - (0.5 * 0.3 + 0.5 * 0.1)) < 1e-9
