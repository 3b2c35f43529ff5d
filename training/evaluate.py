"""Evaluate a models folder: every expert, the refinement, the lung prior and the blends → one HTML report.

    python -m training.evaluate --models models --data DATA --split val --out REPORT_DIR
    python -m training.evaluate --models models --dicoms DICOM_DIR --boxes stage_2_train_labels.csv --out REPORT_DIR

``--data``: COVID-QU-Ex folder or common layout (``--split`` picks the images); ``--dicoms`` +
``--boxes``: DICOMs with RSNA-style boxes (converted with :func:`training.convert.convert_rsna`).
Every map is produced by the app's own code (:mod:`training.pipeline`), with the calibration in the
manifest (gate threshold, Weighted log-losses, Zones values when present).

Metrics (definitions in :mod:`training.metrics`), per map — ConvNeXt-FPN, the two nnU-Nets, the
refinement map, the lung prior alone, the final Zones and Weighted maps:

* Dice and IoU at 0.5, mean over positive images (label 1), and pooled Dice;
* image ROC AUC, positives vs clean negatives (label 0), of each voter's score as the app computes
  it (the manifest's score calibration), and of the gate's mean score; the gate's sensitivity and
  specificity at the manifest's threshold;
* class-balanced pixel log-loss, mean over labelled images;
* pixel calibration: reliability table (10 bins) and ECE.

Pictures: ROC curves, reliability diagrams, Dice histograms, and an overlay montage of the best and
worst positive cases of the final map. Written: ``REPORT_DIR/report.html`` (pictures embedded),
``REPORT_DIR/*.png`` and ``REPORT_DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from app.presets import get_preset
from operators.lib.calibration import PipelineSettings, resolve
from training.common import setup_run
from training.data import records_from
from training.metrics import (class_balanced_logloss, dice, ece, iou, reliability, reliability_merge, roc_auc, roc_curve)
from training.pipeline import Predictions, final_map, lung_prior_map, predict_records
from training.pipeline import scores as voter_scores

logger = logging.getLogger("training.evaluate")


def pack_settings(models: Path, pred: Predictions, preset_name: str) -> PipelineSettings:
    """The settings the app would run ``preset_name`` with on this pack (its manifest's calibration)."""
    from app.model_store import read_manifest

    return resolve(get_preset(preset_name), read_manifest(Path(models)).calibration, pred.map_names)


def evaluate(pred: Predictions, zones: PipelineSettings, weighted: PipelineSettings) -> tuple[dict, dict[str, list[np.ndarray]], dict]:
    """Metrics per map under the two presets' settings; also returns the final maps (for pictures) and per-voter score arrays."""
    n = len(pred.ids)
    labelled = pred.labels >= 0
    maps: dict[str, list[np.ndarray]] = {name: [pred.expert_maps[i, k].astype(np.float32) for i in range(n)] for k, name in enumerate(pred.expert_names)}
    maps[f"{pred.refinement_name} (refinement)"] = [pred.refined[i].astype(np.float32) for i in range(n)]
    voters = voter_scores(pred, zones)
    gate = voters.mean(axis=1)
    zones_final, weighted_final, prior_pos, prior_neg, positives = [], [], [], [], []
    for i in range(n):
        z, outcome = final_map(pred, i, zones, voters[i])
        w, _ = final_map(pred, i, weighted, voters[i])  # one pack, one score calibration: the same voters
        zones_final.append(z.prob_map)
        weighted_final.append(w.prob_map)
        positives.append(outcome.positive)
        prior_pos.append(lung_prior_map(pred, i, zones.preset, True))
        prior_neg.append(lung_prior_map(pred, i, zones.preset, False))
    maps["final: Zones"] = zones_final
    maps["final: Weighted"] = weighted_final
    maps["lung prior alone (positive-study passes)"] = prior_pos
    maps["lung prior alone (negative-study pass)"] = prior_neg
    scores = {name: voters[:, k + 1] for k, name in enumerate(pred.expert_names)}
    scores["classifier"] = voters[:, 0]
    scores["gate mean (final maps)"] = gate
    negatives = pred.labels == 0
    results: dict = {"images": int(n), "positives": int((pred.labels == 1).sum()), "negatives": int(negatives.sum()),
                     "unlabelled": int((pred.labels < 0).sum()), "gate_threshold": zones.gate_threshold,
                     "gate_accuracy": float(np.mean([(positives[i]) == (pred.labels[i] == 1) for i in range(n) if labelled[i]])) if labelled.any() else None,
                     "gate_specificity": float(np.mean([not positives[i] for i in range(n) if negatives[i]])) if negatives.any() else None,
                     "gate_sensitivity": float(np.mean([positives[i] for i in range(n) if pred.labels[i] == 1])) if (pred.labels == 1).any() else None,
                     "maps": {}, "scores": {}}
    pos_index = [i for i in range(n) if pred.labels[i] == 1]
    for name, prob in maps.items():
        dices = [dice(prob[i] >= 0.5, pred.masks[i]) for i in pos_index]
        ious = [iou(prob[i] >= 0.5, pred.masks[i]) for i in pos_index]
        inter = sum(int(np.logical_and(prob[i] >= 0.5, pred.masks[i]).sum()) for i in pos_index)
        total = sum(int((prob[i] >= 0.5).sum()) + int(pred.masks[i].sum()) for i in pos_index)
        losses = [class_balanced_logloss(prob[i], pred.masks[i]) for i in range(n) if labelled[i]]
        table = reliability_merge([reliability(prob[i], pred.masks[i]) for i in range(n) if labelled[i]]) if labelled.any() else None
        results["maps"][name] = {
            "dice_mean_pos": float(np.mean(dices)) if dices else None, "iou_mean_pos": float(np.mean(ious)) if ious else None,
            "dice_pooled_pos": float(2 * inter / total) if total else None,
            "logloss_class_balanced": float(np.mean(losses)) if losses else None,
            "ece": ece(table) if table else None,
            "reliability": {k: np.asarray(v).tolist() for k, v in table.items()} if table else None,
            "dice_per_positive": [round(d, 4) for d in dices],
        }
    for name, values in scores.items():
        results["scores"][name] = {"auc": roc_auc(values[labelled], pred.labels[labelled] == 1) if labelled.any() else None,
                                   "mean_by_class": {c: float(np.mean([values[i] for i in range(n) if pred.classes[i] == c]))
                                                     for c in sorted(set(pred.classes))}}
    return results, maps, scores


# --------------------------------------------------------------------------- pictures and HTML

def _figure_png(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def pictures(pred: Predictions, results: dict, maps: dict, scores: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = pred.labels >= 0
    files = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, values in scores.items():
        fpr, tpr, _ = roc_curve(values[labelled], pred.labels[labelled] == 1)
        ax.plot(fpr, tpr, label=f"{name} (AUC {results['scores'][name]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="Image-level ROC (positives vs clean negatives)")
    ax.legend(fontsize=7, loc="lower right")
    files.append(_figure_png(fig, out / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, entry in results["maps"].items():
        table = entry["reliability"]
        if not table:
            continue
        count = np.asarray(table["count"])
        keep = count > 0
        ax.plot(np.asarray(table["sum_p"])[keep] / count[keep], np.asarray(table["sum_t"])[keep] / count[keep], "o-", ms=3,
                label=f"{name} (ECE {entry['ece']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed opacity frequency", title="Pixel reliability")
    ax.legend(fontsize=6, loc="upper left")
    files.append(_figure_png(fig, out / "reliability.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    shown = [n for n in results["maps"] if not n.startswith("lung prior")]
    ax.hist([results["maps"][n]["dice_per_positive"] for n in shown], bins=np.linspace(0, 1, 11), label=shown)
    ax.set(xlabel="Dice (positive images, threshold 0.5)", ylabel="images", title="Dice histogram")
    ax.legend(fontsize=6)
    files.append(_figure_png(fig, out / "dice_histogram.png"))

    final = maps["final: Zones"]
    pos = [i for i in range(len(pred.ids)) if pred.labels[i] == 1]
    if pos:
        ranked = sorted(pos, key=lambda i: dice(final[i] >= 0.5, pred.masks[i]))
        k = max(1, min(4, len(ranked) // 2))
        chosen = [("worst", i) for i in ranked[:k]] + [("best", i) for i in ranked[-k:]]
        fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
        for ax, (kind, i) in zip(axes.ravel(), chosen):
            ax.imshow(pred.images[i], cmap="gray")
            ax.imshow(np.ma.masked_less(final[i], 0.5), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
            ax.contour(pred.masks[i], levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{kind}: {pred.ids[i]}\nDice {dice(final[i] >= 0.5, pred.masks[i]):.2f}", fontsize=7)
            ax.axis("off")
        fig.suptitle("Final map (Zones) ≥ 0.5 in orange, ground truth outline in cyan")
        files.append(_figure_png(fig, out / "overlays.png"))
    return files


def write_html(results: dict, files: list[Path], out: Path, title: str) -> Path:
    def fmt(value) -> str:
        return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{fmt(m['dice_mean_pos'])}</td><td>{fmt(m['dice_pooled_pos'])}</td><td>{fmt(m['iou_mean_pos'])}</td>"
        f"<td>{fmt(m['logloss_class_balanced'])}</td><td>{fmt(m['ece'])}</td></tr>" for name, m in results["maps"].items())
    score_rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{fmt(s['auc'])}</td><td>{html.escape(json.dumps({k: round(v, 3) for k, v in s['mean_by_class'].items()}))}</td></tr>"
                         for name, s in results["scores"].items())
    images = "".join(f"<h3>{p.stem}</h3><img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'/>" for p in files)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{border:1px solid #ccc;padding:3px 8px}} table{{border-collapse:collapse}} img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{results['images']} images: {results['positives']} positive, {results['negatives']} clean negative, {results['unlabelled']} unlabelled
(scores only). Gate threshold {results['gate_threshold']:.4f}; gate accuracy {fmt(results['gate_accuracy'])}, sensitivity {fmt(results['gate_sensitivity'])},
specificity on clean negatives {fmt(results['gate_specificity'])}.
Research use only, not for clinical use.</p>
<h2>Maps</h2><table><tr><th>map</th><th>Dice (mean, positives)</th><th>Dice (pooled)</th><th>IoU (mean)</th><th>class-balanced log-loss</th><th>ECE</th></tr>{rows}</table>
<p>Class-balanced log-loss per image: ½·mean(−log p) over opacity pixels + ½·mean(−log(1−p)) over the rest; the second term alone when the mask is empty; averaged over labelled images.</p>
<h2>Image-level scores</h2><table><tr><th>score</th><th>ROC AUC</th><th>mean by class</th></tr>{score_rows}</table>
{images}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="*", default=[])
    parser.add_argument("--split", default="val")
    parser.add_argument("--dicoms", type=Path, default=None)
    parser.add_argument("--boxes", type=Path, default=None, help="RSNA-style labels CSV for --dicoms")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cxr_eval_cache"))
    parser.add_argument("--size", type=int, default=256, help="images are squashed to this size for evaluation")
    parser.add_argument("--max-per-class", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_run(args.cache, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dicoms is not None:
        from training.convert import convert_rsna

        converted = Path(tempfile.mkdtemp(prefix="cxr_eval_dicoms_"))
        records = convert_rsna(args.dicoms, args.boxes, converted, max_side=1024)
        title = f"Evaluation on DICOMs in {args.dicoms}"
    else:
        records = [r for data in args.data for r in records_from(data, [args.split])]
        title = f"Evaluation on the {args.split} split of {', '.join(str(d) for d in args.data)}"
    if args.max_per_class:
        by_class: dict[str, list] = {}
        for r in records:
            by_class.setdefault(r.cls, []).append(r)
        records = [r for members in by_class.values() for r in members[: args.max_per_class]]
    pred = predict_records(args.models, records, get_preset("zones"), args.cache, args.size)
    zones, weighted = pack_settings(args.models, pred, "zones"), pack_settings(args.models, pred, "weighted")
    results, maps, scores = evaluate(pred, zones, weighted)
    results["models"] = str(args.models)
    results["calibration_used"] = {"gate_threshold": zones.gate_threshold, "blend_weights": weighted.blend_weights,
                                   "zone_values": list(zones.preset.zone_values), "scores": {k: v.to_dict() for k, v in zones.scores.items()},
                                   "sources": zones.sources}
    files = pictures(pred, results, maps, scores, args.out)
    (args.out / "metrics.json").write_text(json.dumps(results, indent=1, default=float))
    write_html(results, files, args.out, title)
    logger.info("report: %s", args.out / "report.html")
    return results


if __name__ == "__main__":
    main()
