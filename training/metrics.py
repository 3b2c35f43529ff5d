"""Metrics, defined once, used by training validation, calibration and the evaluation report.

Class-balanced pixel log-loss (the "weighted log-loss" of the write-up's Weighted blend), per image::

    L = ½ · mean(−log p) over opacity pixels + ½ · mean(−log(1 − p)) over the other pixels
    L = mean(−log(1 − p)) over all pixels                     when the mask is empty

with p clipped to [1e-6, 1 − 1e-6]; the dataset value is the mean of L over images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-6


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int(np.logical_or(pred, truth).sum())
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def class_balanced_logloss(prob: np.ndarray, truth: np.ndarray) -> float:
    """The per-image class-balanced pixel log-loss (module docstring)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1 - EPS)
    truth = np.asarray(truth, bool)
    negative = -np.log1p(-p[~truth]).mean() if (~truth).any() else 0.0
    if not truth.any():
        return float(negative)
    positive = -np.log(p[truth]).mean()
    if not (~truth).any():
        return float(positive)
    return float(0.5 * positive + 0.5 * negative)


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count one half); NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), thresholds descending."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    tpr = np.array([(scores[labels] >= t).mean() if labels.any() else np.nan for t in thresholds])
    fpr = np.array([(scores[~labels] >= t).mean() if (~labels).any() else np.nan for t in thresholds])
    return fpr, tpr, thresholds


def reliability(prob: np.ndarray, truth: np.ndarray, bins: int = 10) -> dict:
    """Pixel calibration: per equal-width probability bin, mean predicted p, observed frequency, count;
    and the expected calibration error ECE = Σ (n_b / N) · |freq_b − mean_p_b|."""
    p = np.asarray(prob, np.float64).ravel()
    t = np.asarray(truth, bool).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_t = np.bincount(which, weights=t.astype(np.float64), minlength=bins)
    return {"edges": edges, "count": count, "sum_p": sum_p, "sum_t": sum_t}


def reliability_merge(parts: Sequence[dict]) -> dict:
    """Add reliability tables (one per image) into one."""
    out = {"edges": parts[0]["edges"], "count": 0.0, "sum_p": 0.0, "sum_t": 0.0}
    for part in parts:
        for key in ("count", "sum_p", "sum_t"):
            out[key] = out[key] + part[key]
    return out


def ece(table: dict) -> float:
    count = np.asarray(table["count"], np.float64)
    total = count.sum()
    if total == 0:
        return float("nan")
    nonzero = count > 0
    mean_p = table["sum_p"][nonzero] / count[nonzero]
    freq = table["sum_t"][nonzero] / count[nonzero]
    return float((count[nonzero] / total * np.abs(freq - mean_p)).sum())


def best_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Threshold maximising balanced accuracy (Youden's J); midpoint between neighbouring scores."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    values = np.unique(scores)
    if len(values) < 2 or labels.all() or not labels.any():
        return 0.5
    candidates = (values[1:] + values[:-1]) / 2
    j = [(scores[labels] >= c).mean() - (scores[~labels] >= c).mean() for c in candidates]
    return float(candidates[int(np.argmax(j))])


def opacity_summary(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[int], threshold: float = 0.5) -> dict:
    """Validation summary of opacity maps: mean Dice on positives (label 1), image AUC positives vs
    negatives (label 0) of the predicted opacity area (fraction of pixels ≥ 0.5: the monotone part of
    an area score, :class:`operators.lib.calibration.ScoreCalibration`), and the mean class-balanced
    log-loss over labelled images."""
    from operators.lib.calibration import ScoreCalibration, ScoreFeature

    area = ScoreCalibration(ScoreFeature.AREA, threshold)

    labels = np.asarray(labels)
    dices = [dice(p >= threshold, m) for p, m, y in zip(probs, masks, labels) if y == 1]
    known = labels >= 0
    scores = np.array([area.feature_of(p) for p in probs])
    losses = [class_balanced_logloss(p, m) for p, m, y in zip(probs, masks, labels) if y >= 0]
    return {"val_dice_pos": float(np.mean(dices)) if dices else float("nan"),
            "val_auc": roc_auc(scores[known], labels[known] == 1),
            "val_logloss": float(np.mean(losses)) if losses else float("nan")}
