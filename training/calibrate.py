"""Calibrate a models folder and write the results into its ``manifest.json`` (which the app reads).

    python -m training.calibrate --models models --data DATA [--cache /work/train_runs/eval]

* **Weighted blend** (write-up 4.2): each of the four maps' class-balanced log-loss
  (:func:`training.metrics.class_balanced_logloss`) on the **calib** split → ``models.<name>.calibration.weighted_logloss``
  (the app's blend weights are ∝ 1 / loss). Computed over labelled images (label 0 or 1) on the map
  at the image's size; the refinement map is the refinement of the union of expert masks, 0 outside its crops.
* **Gate threshold**: the threshold on the mean of the four scores that maximises Youden's J
  (positives vs clean negatives) on the **calib** split → ``calibration.gate_threshold``.
* **Zones** (write-up 4.1: "optimized during the internal validation"): the five values for 0–4
  agreeing maps, non-decreasing, chosen by coordinate descent over a 0.01 grid to minimise the mean
  class-balanced log-loss of the final map (after the lung prior) on the **val** split →
  ``calibration.zone_values``. Because they are fitted on val, the Zones metrics on val are
  optimistic; the Weighted blend's are not.

Images: COVID-QU-Ex folder or common layout (``--data``); predictions are cached under ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from app.presets import get_preset
from training.common import setup_run
from training.data import records_from
from training.metrics import EPS, best_threshold, class_balanced_logloss
from training.pipeline import Predictions, final_map, gate_scores, predict_records

logger = logging.getLogger("training.calibrate")
GRID = np.round(np.arange(0.0, 1.0, 0.01), 2)


def map_loglosses(pred: Predictions) -> dict[str, float]:
    labelled = np.nonzero(pred.labels >= 0)[0]
    out = {}
    for k, name in enumerate(pred.expert_names):
        out[name] = float(np.mean([class_balanced_logloss(pred.expert_maps[i, k].astype(np.float32), pred.masks[i]) for i in labelled]))
    out[pred.refinement_name] = float(np.mean([class_balanced_logloss(pred.refined[i].astype(np.float32), pred.masks[i]) for i in labelled]))
    return out


def zones_loss_function(pred: Predictions, gate_threshold: float):
    """values (5 zone values) → mean class-balanced log-loss of the final Zones maps over labelled images.

    A positive study's final pixel is max(zone_value[votes], lung prior), and the lung prior takes a
    handful of values, so each image reduces to pixel counts per (votes, truth, prior value): the
    loss of any candidate table is then exact arithmetic on those counts.
    """
    from app.presets import BlendMode

    preset = get_preset("zones")
    assert preset.blend is BlendMode.ZONES
    constant, tables = [], []  # per-image loss of negative studies; per positive study (counts, n_pos, n_neg, priors)
    for i in np.nonzero(pred.labels >= 0)[0]:
        truth = pred.masks[i]
        base, positive = final_map(pred, i, preset, gate_threshold, zone_values=(0.0,) * 5)  # the prior alone
        if not positive:
            constant.append(class_balanced_logloss(base, truth))
            continue
        maps = [pred.expert_maps[i, k].astype(np.float32) for k in range(3)] + [pred.refined[i].astype(np.float32)]
        votes = sum((m >= preset.mask_threshold).astype(np.int64) for m in maps)
        priors, prior_index = np.unique(base, return_inverse=True)
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


def optimise_zones(pred: Predictions, gate_threshold: float, start: tuple[float, ...], rounds: int = 3) -> tuple[tuple[float, ...], float]:
    """Coordinate descent on the five zone values (non-decreasing, 0.01 grid) minimising :func:`zones_loss_function`."""
    loss = zones_loss_function(pred, gate_threshold)
    values = list(start)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cxr_eval_cache"))
    parser.add_argument("--max-calib-per-class", type=int, default=0, help="at most N calib images per class (the write-up used 14 studies)")
    parser.add_argument("--max-val-per-class", type=int, default=0, help="at most N val images per class (use evaluate's --max-per-class)")
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
    loglosses = map_loglosses(calib)
    threshold = best_threshold(gate_scores(calib), calib.labels == 1)
    val = predict_records(args.models, records("val", False, args.max_val_per_class), preset, args.cache)  # same images as training.evaluate: one cache
    zones, zones_loss = optimise_zones(val, threshold, tuple(preset.zone_values))
    manifest_path = args.models / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name, value in loglosses.items():
        manifest["models"][name].setdefault("calibration", {})["weighted_logloss"] = round(value, 5)
    manifest.setdefault("calibration", {}).update({
        "gate_threshold": round(float(threshold), 5),
        "zone_values": [round(v, 3) for v in zones],
        "method": "weighted_logloss and gate_threshold on the calib split, zone_values on the val split (python -m training.calibrate)",
        "calib_images": len(calib.ids), "val_images": len(val.ids),
    })
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    result = {"weighted_logloss": loglosses, "gate_threshold": threshold, "zone_values": zones, "zones_val_logloss": zones_loss}
    logger.info("calibration: %s", json.dumps(result))
    return result


if __name__ == "__main__":
    main()
