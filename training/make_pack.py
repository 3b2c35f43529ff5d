"""Assemble a models folder (manifest + model folders + sha256) from exported models, and write model cards.

    python -m training.make_pack assemble --exports /work/train_runs/export --runs /work/train_runs --out models
    python -m training.make_pack cards --models models --runs /work/train_runs --metrics REPORT_DIR/metrics.json

``assemble`` copies each model's native files (nothing else) into ``OUT/<name>/``, lists them with
their sha256 in ``OUT/manifest.json`` in pipeline order (classifier, the three experts in gate
order, refinement, lung) and keeps no calibration (run ``training.calibrate`` next). ``cards``
writes ``OUT/<name>/MODEL_CARD.md`` (not listed in the manifest, so the app ignores it) from the
training summaries in the run folders, the evaluation metrics and the manifest's calibration.
``--spec PACK.json`` replaces the reference pack's list of models (:data:`REFERENCE_PACK`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

from app.model_formats import FORMATS, Architecture
from app.model_store import MANIFEST_NAME, SCHEMA_VERSION, sha256_of

DATA_NOTE = ("COVID-QU-Ex 'Infection Segmentation Data/Train' (its path is the recipes' --data argument), our deterministic split "
             "(sha1 of file name per class: train 70 % / val 15 % / calib 15 %)")
LICENCE = ("Research use only, not for clinical use. Trained on COVID-QU-Ex (Tahir et al., Qatar University; "
           "research-use terms of the dataset); the weights inherit those terms.")

#: the reference pack: name (= folder = manifest key), role, architecture, input size, options, note
REFERENCE_PACK: list[dict] = [
    {"name": "xrv_densenet121_opacity", "role": "classifier", "architecture": "xrv-densenet121", "input_size_px": 224,
     "options": {"label": "Lung Opacity"},
     "note": "torchxrayvision DenseNet-121 (random init), only the 'Lung Opacity' output trained; production uses xrv's public weights."},
    {"name": "convnext_fpn_256", "role": "expert", "architecture": "convnext-fpn", "input_size_px": 256, "options": {},
     "note": "ConvNeXt-FPN on histogram-equalised input at 256 px (production: 336 px, CLIP-initialised ConvNeXt); random init (no CLIP checkpoint here)."},
    {"name": "nnunet_2d_192_histeq", "role": "expert", "architecture": "nnunet-2d", "input_size_px": 192, "options": {"label": "opacity", "fold": 0},
     "note": "nnU-Net 2D with randomly applied histogram equalisation (the write-up's 336 model) at 192 px, small plan."},
    {"name": "nnunet_2d_256", "role": "expert", "architecture": "nnunet-2d", "input_size_px": 256, "options": {"label": "opacity", "fold": 0},
     "note": "nnU-Net 2D, the write-up's 768 model at 256 px (stage one only: no VinDr data here), small plan."},
    {"name": "nnunet_refine_128", "role": "refinement", "architecture": "nnunet-2d", "input_size_px": 128, "options": {"label": "opacity", "fold": 0},
     "note": "Refinement nnU-Net on crops around opacity components (and negative crops), 128 px."},
    {"name": "lung_unet_128", "role": "lung", "architecture": "small-unet", "input_size_px": 128, "options": {},
     "note": "SmallUNet lung segmenter on COVID-QU-Ex lung masks, 128 px."},
]

def _summary(runs: Path, name: str) -> dict:
    """A run's training_summary.json, its re-train command made machine-independent (see :func:`portable_command`)."""
    path = Path(runs) / name / "training_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if "command" in summary:
        summary["command"] = portable_command(summary["command"], data=summary.get("data"), runs=runs)
    summary["commands"] = [portable_command(c, data=summary.get("data"), runs=runs) for c in summary.get("commands", [])]
    return summary


def portable_command(command: str, data: str | None, runs: Path) -> str:
    """Replace this machine's data and run folders in a recorded command by ``$DATA`` and ``$RUNS``,
    so the pack names no local path (the product never depends on where it was trained).

    The data folders are ``data`` when given, else the values of the command's own ``--data``."""
    tokens = shlex.split(command)
    data_paths = [data] if data else []
    if "--data" in tokens:
        index = tokens.index("--data") + 1
        while index < len(tokens) and not tokens[index].startswith("--"):
            data_paths.append(tokens[index])
            index += 1
    replacements = [(path, "$DATA") for path in data_paths] + [(str(Path(runs).resolve()), "$RUNS"), (str(runs), "$RUNS")]
    for path, variable in replacements:
        if path:
            command = command.replace(f"'{path}'", f'"{variable}"').replace(path, variable)
    return command


def exported_input_size(folder: Path, architecture: Architecture) -> int | None:
    """The input size the exported model itself declares (nnU-Net: its plans' patch; ours: config.json)."""
    if architecture is Architecture.NNUNET_2D:
        return int(json.loads((folder / "plans.json").read_text())["configurations"]["2d"]["patch_size"][0])
    config = folder / "config.json"
    if config.is_file():
        size = json.loads(config.read_text()).get("input_size_px")
        return int(size) if size else None
    return None


def assemble(exports: Path, runs: Path, out: Path, spec: list[dict], pack_name: str = "reference-covid-qu-ex") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    for entry in spec:
        name, architecture = entry["name"], Architecture(entry["architecture"])
        source, target = Path(exports) / name, out / name
        if target.exists():
            shutil.rmtree(target)
        files = {}
        for relative in FORMATS[architecture].files(entry["options"]):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / relative, target / relative)
            files[relative] = sha256_of(target / relative)
        summary = _summary(runs, name)
        provenance = f"{entry['note']} Data: {DATA_NOTE}. Command: {summary.get('command', 'see MODEL_CARD.md')}."
        size = exported_input_size(target, architecture) or entry["input_size_px"]
        models[name] = {"role": entry["role"], "architecture": architecture.value, "format": FORMATS[architecture].name,
                        "input_size_px": size, "version": "1.0.0-reference", "provenance": provenance,
                        "files": files, "options": entry["options"]}
    manifest = {"schema_version": SCHEMA_VERSION,
                "pack": {"name": pack_name, "meaningful": True,
                         "description": ("Reference pack trained on CPU from COVID-QU-Ex (smaller widths, resolutions and epochs than "
                                         "production; same formats and loaders). " + LICENCE)},
                "calibration": {"gate_threshold": 0.5}, "models": models}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


#: the issue's targets for the whole pack, on the validation split
TARGETS = {"dice": 0.70, "auc": 0.97, "voter_auc": 0.85, "specificity": 0.95}


def pack_results_lines(metrics: dict) -> list[str]:
    """The pack-level section every card carries: the blended maps and the gate against the targets."""
    maps, scores = metrics.get("maps", {}), metrics.get("scores", {})
    zones, weighted = maps.get("final: Zones"), maps.get("final: Weighted")
    if not zones or not weighted:
        return []
    experts = {k: v["logloss_class_balanced"] for k, v in maps.items() if not k.startswith(("final", "lung prior"))}
    prior = maps.get("lung prior alone (positive-study passes)", {}).get("logloss_class_balanced")
    gate_auc = scores.get("gate mean (final maps)", {}).get("auc")
    best_single = min(experts.values()) if experts else None

    def verdict(ok: bool) -> str:
        return "reached" if ok else "**not reached**"

    voters = {k: v.get("auc") for k, v in scores.items() if k != "gate mean (final maps)"}
    voter_lines = []
    if voters:
        low = min((v for v in voters.values() if v is not None), default=None)
        voter_lines.append("- each voter's score AUC: " + ", ".join(f"{k} {_fmt(v)}" for k, v in voters.items()) +
                           f" (target ≥ {TARGETS['voter_auc']} each: {verdict(low is not None and low >= TARGETS['voter_auc'])})")
    if metrics.get("gate_specificity") is not None:
        voter_lines.append(f"- gate specificity on clean negatives at the manifest's threshold: {_fmt(metrics['gate_specificity'])} "
                           f"(target ≥ {TARGETS['specificity']}: {verdict(metrics['gate_specificity'] >= TARGETS['specificity'])})")
    blend_loss = max(zones["logloss_class_balanced"], weighted["logloss_class_balanced"])  # both blends must beat them
    beats = best_single is not None and prior is not None and blend_loss < min(best_single, prior)
    return ["## The pack as a whole (this model is one part of it; models/README.md)", "",
            f"- blended map Dice on COVID-19 positives: Zones {_fmt(zones['dice_mean_pos'])}, Weighted {_fmt(weighted['dice_mean_pos'])} "
            f"(target ≥ {TARGETS['dice']} for both: {verdict(min(zones['dice_mean_pos'], weighted['dice_mean_pos']) >= TARGETS['dice'])})",
            f"- image AUC COVID-19 vs Normal of the gate's mean score: {_fmt(gate_auc)} (target ≥ {TARGETS['auc']}: "
            f"{verdict(gate_auc is not None and gate_auc >= TARGETS['auc'])})",
            *voter_lines,
            f"- class-balanced log-loss: Zones {_fmt(zones['logloss_class_balanced'])}, Weighted {_fmt(weighted['logloss_class_balanced'])}; "
            f"best single map {_fmt(best_single)}, lung prior alone {_fmt(prior)} (target: lower than both: {verdict(beats)})", ""]


def write_cards(models_dir: Path, runs: Path, metrics_path: Path | None, spec: list[dict]) -> None:
    manifest = json.loads((Path(models_dir) / MANIFEST_NAME).read_text())
    metrics = json.loads(Path(metrics_path).read_text()) if metrics_path and Path(metrics_path).is_file() else {}
    for entry in spec:
        name = entry["name"]
        card = manifest["models"][name]
        summary = _summary(runs, name)
        lines = [f"# {name}", "", f"**{LICENCE}**", "", entry["note"], "",
                 "| | |", "|---|---|",
                 f"| role | {card['role']} |", f"| architecture / format | {card['architecture']} / {card['format']} |",
                 f"| input size | {card['input_size_px']} px |", f"| version | {card['version']} |",
                 f"| data | {DATA_NOTE} |",
                 f"| split used (class → split → images) | `{json.dumps(summary.get('split', {}))}` |",
                 f"| trained on | {summary.get('device', 'CPU')} |",
                 f"| epochs | {summary.get('epochs', '–')} (best/exported: {summary.get('best_epoch', 'last')}) |",
                 f"| training time | {round(summary.get('train_seconds', 0) / 60, 1)} min |",
                 f"| initialisation | {summary.get('init', 'random')} |",
                 "", ("Re-train (these commands in order; each again resumes from the run folder's checkpoint):"
                      if len(summary["commands"]) > 1 else "Re-train (same command again resumes from the run folder's checkpoint):"), "",
                 "```bash", *(summary["commands"] if len(summary["commands"]) > 1 else [summary.get("command", "(see docs/training.md)")]),
                 "```", ""]
        if summary.get("best_val"):
            lines += ["Validation during training (val split): `" + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                                            for k, v in summary["best_val"].items()}) + "`", ""]
        if summary.get("operating_point"):
            lines += [f"Operating point: `{json.dumps(summary['operating_point'])}`", ""]
        if summary.get("last_pseudo_dice") is not None:
            lines += [f"nnU-Net's last pseudo-Dice (val patches): {summary['last_pseudo_dice']:.3f}", ""]
        if metrics:
            lines += ["## Metrics on the validation split (python -m training.evaluate, the app's own code)", ""]
            maps = metrics.get("maps", {})
            key = name if name in maps else f"{name} (refinement)" if f"{name} (refinement)" in maps else None
            if key:
                m = maps[key]
                lines += [f"- Dice (mean over COVID-19 positives, threshold 0.5): {_fmt(m['dice_mean_pos'])}; pooled {_fmt(m['dice_pooled_pos'])}; "
                          f"IoU {_fmt(m['iou_mean_pos'])}",
                          f"- class-balanced pixel log-loss: {_fmt(m['logloss_class_balanced'])}; ECE {_fmt(m['ece'])}"]
            score_key = name if name in metrics.get("scores", {}) else ("classifier" if card["role"] == "classifier" else None)
            if score_key:
                lines += [f"- image ROC AUC COVID-19 vs Normal of its score: {_fmt(metrics['scores'][score_key]['auc'])}"]
            if card.get("calibration"):
                lines += [f"- calibration (calib split): `{json.dumps(card['calibration'])}`"]
            lines += [""] + pack_results_lines(metrics)
        (Path(models_dir) / name / "MODEL_CARD.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assemble")
    p.add_argument("--exports", type=Path, required=True)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--spec", type=Path, default=None)
    p = sub.add_parser("cards")
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--metrics", type=Path, default=None)
    p.add_argument("--spec", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text()) if args.spec else REFERENCE_PACK
    if args.command == "assemble":
        assemble(args.exports, args.runs, args.out, spec)
        print(f"assembled {args.out}")
    else:
        write_cards(args.models, args.runs, args.metrics, spec)
        print(f"wrote model cards in {args.models}")


if __name__ == "__main__":
    main()
