"""Calibrate a models folder and write the results into its ``manifest.json`` (which the app reads).

    python -m training.calibrate --models models --data DATA [--cache /work/train_runs/eval]

* **Scores** (the gate's four voters): for each expert, every candidate feature of its map
  (:data:`operators.lib.calibration.SCORE_FEATURES`: mean of the top 1 % / 5 % of pixels, fraction of
  pixels ≥ 0.5 / ≥ 0.8) gets a logistic fit ``σ(a · log(feature + 1e-4) + b)`` to the image label
  (COVID-19 vs Normal) on the **calib** split; the feature with the highest calib AUC is kept. The
  classifier's output gets the same logistic map. All four scores are then probabilities on one
  scale, so their mean — the write-up's gate — weighs them alike → ``models.<name>.calibration.score``.
* **Weighted blend** (write-up 4.2): each of the four maps' class-balanced log-loss
  (:func:`training.metrics.class_balanced_logloss`) on the **calib** split → ``models.<name>.calibration.weighted_logloss``
  (the app's blend weights are ∝ 1 / loss). Computed over labelled images (label 0 or 1) on the map
  at the image's size; the refinement map is the refinement of the union of expert masks, 0 outside its crops.
* **Gate threshold**: on the **calib** split, the threshold on the mean of the four calibrated
  scores that maximises Youden's J among those keeping specificity on clean negatives ≥
  ``--min-specificity`` (0.95) → ``calibration.gate_threshold``.
* **Zones** (write-up 4.1: "optimized during the internal validation"): the five values for 0–4
  agreeing maps, non-decreasing, chosen by coordinate descent over a 0.01 grid to minimise the mean
  class-balanced log-loss of the final map (after the lung prior) on the **val** split →
  ``calibration.zone_values``. Because they are fitted on val, the Zones metrics on val are
  optimistic; the Weighted blend's are not.

Every score, gate and map here is computed by the app's step functions (:mod:`training.pipeline`).
Images: COVID-QU-Ex folder or common layout (``--data``); predictions are cached under ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.presets import get_preset
from operators.lib.calibration import SCORE_FEATURES, UNCALIBRATED_CLASSIFIER, Calibration, PipelineSettings, ScoreCalibration, resolve
from operators.lib.settings import BlendMode
from training.common import setup_run
from training.data import records_from
from training.metrics import EPS, class_balanced_logloss, roc_auc
from training.pipeline import Predictions, expert_scores_with, final_map, gate_scores, predict_records
from training.pipeline import scores as voter_scores

logger = logging.getLogger("training.calibrate")
GRID = np.round(np.arange(0.0, 1.0, 0.01), 2)


def map_loglosses(pred: Predictions) -> dict[str, float]:
    """Each map's mean class-balanced log-loss over labelled images; a map whose loss is not finite
    (a broken model that outputs NaN) is left out with a warning, so the Weighted blend falls back to
    equal weights instead of the pack failing to load."""
    labelled = np.nonzero(pred.labels >= 0)[0]
    maps = {name: pred.expert_maps[:, k] for k, name in enumerate(pred.expert_names)}
    maps[pred.refinement_name] = pred.refined
    out = {}
    for name, stack in maps.items():
        loss = float(np.mean([class_balanced_logloss(stack[i].astype(np.float32), pred.masks[i]) for i in labelled]))
        if np.isfinite(loss):
            out[name] = loss
        else:
            logger.warning("%s: its maps give a non-finite log-loss (NaN outputs?); no Weighted-blend weight is stored", name)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 50) -> tuple[float, float]:
    """(slope, intercept) of a one-feature logistic regression by Newton's method, lightly L2-regularised."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -60, 60)))
        gradient = design.T @ (p - y) + l2 * np.array([w[0], 0.0])
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.diag([1.0, 1e-9])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_score(values: np.ndarray, positive: np.ndarray, base: ScoreCalibration) -> ScoreCalibration:
    """``base``'s feature with a logistic map fitted to the labels (σ(a·log(v + offset) + b))."""
    slope, intercept = fit_logistic(np.log(np.maximum(values, 0.0) + base.offset), positive)
    return replace(base, slope=round(slope, 6), intercept=round(intercept, 6))


def calibrate_scores(pred: Predictions) -> tuple[dict[str, ScoreCalibration], dict[str, dict]]:
    """Each voter's score calibration on ``pred`` (the calib split); also the per-feature calib AUCs."""
    labelled = pred.labels >= 0
    positive = pred.labels[labelled] == 1
    chosen: dict[str, ScoreCalibration] = {}
    report: dict[str, dict] = {}
    for k, name in enumerate(pred.expert_names):
        aucs = {f"{c.feature.value}({c.parameter})": roc_auc(expert_scores_with(pred, k, c)[labelled], positive) for c in SCORE_FEATURES}
        best = max(range(len(SCORE_FEATURES)), key=lambda j: list(aucs.values())[j])
        chosen[name] = fit_score(pred.expert_features[labelled, k, best], positive, SCORE_FEATURES[best])
        report[name] = {"calib_auc_by_feature": {k2: round(v, 4) for k2, v in aucs.items()}, "chosen": chosen[name].to_dict()}
    chosen[pred.classifier_name] = fit_score(pred.classifier_raw[labelled], positive, UNCALIBRATED_CLASSIFIER)
    report[pred.classifier_name] = {"calib_auc": round(roc_auc(pred.classifier_raw[labelled], positive), 4),
                                    "chosen": chosen[pred.classifier_name].to_dict()}
    return chosen, report


def gate_threshold_at_specificity(scores: np.ndarray, positive: np.ndarray, min_specificity: float) -> float:
    """The threshold (score ≥ t is positive) maximising Youden's J among those whose specificity is at
    least ``min_specificity``; halfway between neighbouring scores, so it does not sit on a sample."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    best, best_j = float(candidates[-1]), -math.inf
    for t in candidates:
        predicted = scores >= t
        sensitivity = predicted[positive].mean() if positive.any() else 0.0
        specificity = (~predicted[~positive]).mean() if (~positive).any() else 1.0
        if specificity >= min_specificity and sensitivity + specificity - 1 > best_j:
            best, best_j = float(t), sensitivity + specificity - 1
    return best


def zones_loss_function(pred: Predictions, settings: PipelineSettings):
    """values (5 zone values) → mean class-balanced log-loss of the final Zones maps over labelled images.

    A positive study's final pixel is max(zone_value[votes], lung prior), and the lung prior takes a
    handful of values, so each image reduces to pixel counts per (votes, truth, prior value): the
    loss of any candidate table is then exact arithmetic on those counts.
    """
    assert settings.preset.blend is BlendMode.ZONES
    zero = replace(settings, preset=replace(settings.preset, zone_values=(0.0,) * 5))
    image_scores = voter_scores(pred, settings)
    constant, tables = [], []  # per-image loss of negative studies; per positive study (counts, n_pos, n_neg, priors)
    for i in np.nonzero(pred.labels >= 0)[0]:
        truth = pred.masks[i]
        base, outcome = final_map(pred, i, zero, image_scores[i])  # the prior alone
        if not outcome.positive:
            constant.append(class_balanced_logloss(base.prob_map, truth))
            continue
        maps = [pred.expert_maps[i, k].astype(np.float32) for k in range(3)] + [pred.refined[i].astype(np.float32)]
        votes = sum((m >= settings.preset.mask_threshold).astype(np.int64) for m in maps)
        priors, prior_index = np.unique(base.prob_map, return_inverse=True)
        counts = np.zeros((5, 2, len(priors)))
        np.add.at(counts, (votes.ravel(), truth.ravel().astype(np.int64), prior_index.ravel()), 1)
        tables.append((counts, priors, int(truth.sum()), int((~truth).sum())))

    def loss(values: tuple[float, ...]) -> float:
        table = np.asarray(values, np.float64)
        total = list(constant)
        for counts, priors, n_pos, n_neg in tables:
            p = np.clip(np.maximum(table[:, None], priors[None, :]), EPS, 1 - EPS)  # 5 × priors
            neg = (counts[:, 0] * -np.log1p(-p)).sum() / max(n_neg, 1)
            if n_pos == 0:
                total.append(neg)
                continue
            pos = (counts[:, 1] * -np.log(p)).sum() / n_pos
            total.append(pos if n_neg == 0 else 0.5 * pos + 0.5 * neg)
        return float(np.mean(total)) if total else float("nan")

    return loss


def optimise_zones(pred: Predictions, settings: PipelineSettings, rounds: int = 3) -> tuple[tuple[float, ...], float]:
    """Coordinate descent on the five zone values (non-decreasing, 0.01 grid) minimising :func:`zones_loss_function`,
    starting from ``settings.preset.zone_values``."""
    loss = zones_loss_function(pred, settings)
    values = list(settings.preset.zone_values)
    best = loss(tuple(values))
    for _ in range(rounds):
        for z in range(5):
            lo = values[z - 1] if z > 0 else 0.0
            hi = values[z + 1] if z < 4 else 0.99
            for candidate in GRID[(GRID >= lo) & (GRID <= hi)]:
                trial = list(values)
                trial[z] = float(candidate)
                value = loss(tuple(trial))
                if value < best - 1e-12:
                    best, values = value, trial
    return tuple(values), best


def calibrate(calib: Predictions, val: Predictions, min_specificity: float = 0.95) -> tuple[Calibration, dict]:
    """The whole calibration from predictions on the calib and val splits (see the module docstring)."""
    score_calibrations, score_report = calibrate_scores(calib)
    loglosses = map_loglosses(calib)
    partial = Calibration(weighted_logloss=loglosses, scores=score_calibrations)
    settings = resolve(get_preset("zones"), partial, calib.map_names)
    labelled = calib.labels >= 0
    threshold = gate_threshold_at_specificity(gate_scores(calib, settings)[labelled], calib.labels[labelled] == 1, min_specificity)
    settings = resolve(get_preset("zones"), replace(partial, gate_threshold=threshold), val.map_names)
    zones, zones_loss = optimise_zones(val, settings)
    calibration = replace(partial, gate_threshold=threshold, zone_values=tuple(zones))
    return calibration, {"scores": score_report, "weighted_logloss": loglosses, "gate_threshold": threshold,
                         "zone_values": zones, "zones_val_logloss": zones_loss}


def write_to_manifest(models: Path, calibration: Calibration, calib_images: int, val_images: int, min_specificity: float) -> None:
    manifest_path = Path(models) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["models"].items():
        fitted = entry.setdefault("calibration", {})
        if name in calibration.weighted_logloss:
            fitted["weighted_logloss"] = round(calibration.weighted_logloss[name], 5)
        if name in calibration.scores:
            fitted["score"] = calibration.scores[name].to_dict()
    manifest.setdefault("calibration", {}).update({
        "gate_threshold": round(float(calibration.gate_threshold), 5),
        "zone_values": [round(v, 3) for v in calibration.zone_values],
        "method": (f"score maps, weighted_logloss and gate_threshold (specificity ≥ {min_specificity} on clean negatives) on the calib "
                   "split, zone_values on the val split (python -m training.calibrate)"),
        "calib_images": calib_images, "val_images": val_images,
    })
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cxr_eval_cache"))
    parser.add_argument("--max-calib-per-class", type=int, default=0, help="at most N calib images per class (the write-up used 14 studies)")
    parser.add_argument("--max-val-per-class", type=int, default=0, help="at most N val images per class (use evaluate's --max-per-class)")
    parser.add_argument("--min-specificity", type=float, default=0.95, help="the gate threshold keeps at least this specificity on calib")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_run(args.cache, args.threads)
    preset = get_preset("zones")

    def records(split: str, labelled_only: bool, limit: int):
        chosen = [r for data in args.data for r in records_from(data, [split]) if r.label >= 0 or not labelled_only]
        if limit:
            by_class: dict[str, list] = {}
            for r in chosen:
                by_class.setdefault(r.cls, []).append(r)
            chosen = [r for members in by_class.values() for r in members[:limit]]
        return chosen

    calib = predict_records(args.models, records("calib", True, args.max_calib_per_class), preset, args.cache)
    val = predict_records(args.models, records("val", False, args.max_val_per_class), preset, args.cache)  # same images as training.evaluate: one cache
    calibration, result = calibrate(calib, val, args.min_specificity)
    write_to_manifest(args.models, calibration, len(calib.ids), len(val.ids), args.min_specificity)
    logger.info("calibration: %s", json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
