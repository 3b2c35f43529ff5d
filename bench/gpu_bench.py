"""The method on a GPU: warm seconds per study at each precision, and which precision keeps the maps.

    bench/gpu_bench.sh [CARRY]                       # on the lent GPU machine (see that script)
    python -m bench.gpu_bench --profile production-light-lung --studies 8 [--device cuda] [--precisions fp32,bf16,fp16]

The lent GPU machine has no holoscan (its wheels do not fit the 64 MiB the device tool carries), so
this runs the app's per-study work without the holoscan graph: the DICOM decoding the input operator
calls (:func:`operators.lib.dicom_input.load_cxr`), the model wrappers the app loads
(:func:`app.model_store.load_models`, torch on ``--device``) and the step functions the operators call
(:mod:`operators.lib.steps`), with the settings the app resolves (:func:`operators.lib.calibration.resolve`).
Writing the DICOM results is left out: it is CPU work that the writer thread overlaps with the next
study (``docs/benchmark.md`` measures it on CPU).

For each precision — ``fp32``, and ``bf16`` / ``fp16`` under ``torch.autocast`` — it runs every study
once to warm up, then ``--repeats`` times timed (``torch.cuda.synchronize`` around each study), and
compares every map with the fp32 pass: classifier output, the three expert maps, the refinement map,
the lung mask (fraction of pixels that differ) and the final map. The recommended precision is the
fastest whose maps all stay within ``--tolerance`` (1e-3) of fp32. Output: ``bench/results/gpu-<name>.json``
and ``.md``. The issue's goal on a GPU: at most 0.5 s per study, warm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
#: Real chest radiographs that travel with the repository (the RSNA CRs and the NIH DX/SC).
DEFAULT_DICOM = REPO / "tests" / "data" / "dicom"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GOAL_S = 0.5


def study_paths(folder: Path, count: int) -> list[Path]:
    """``count`` chest DICOMs from ``folder`` (RSNA CRs first, then the NIH image), repeated if needed."""
    paths = sorted(folder.glob("rsna/*.dcm")) + sorted(folder.glob("misc/nih_*.dcm"))
    if not paths:
        raise SystemExit(f"no chest DICOMs under {folder} (rsna/*.dcm, misc/nih_*.dcm)")
    return [paths[i % len(paths)] for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_study(path: Path, loaded, settings) -> dict[str, Any]:
    """Decode one DICOM and run steps 1–4 as the operators chain them; return every map and the gate."""
    from operators.lib.dicom_input import load_cxr
    from operators.lib.segmenters import predict_expert
    from operators.lib.steps import classifier_score, expert_score, final_map, gate, refine

    image = load_cxr(path, path.stem).pixels
    raw = float(loaded.classifier.predict(image))
    squares, maps = {}, {}
    for expert in loaded.experts:
        squares[expert.name], maps[expert.name] = predict_expert(expert, image)
    lung = loaded.lung.predict_mask(image)
    scores = [classifier_score(raw, settings.score(loaded.classifier.name, classifier=True))]
    scores += [expert_score(squares[e.name], settings.score(e.name)) for e in loaded.experts]
    outcome = gate(scores, settings.gate_threshold)
    refined = None
    if outcome.positive:
        refined = refine(image, list(maps.values()), loaded.refinement.predict_square, loaded.refinement.input_size_px, settings.preset)[0]
        maps[loaded.refinement.name] = refined
    final = final_map(outcome.positive, maps, lung, settings)
    return {"classifier": raw, "maps": maps, "lung": lung, "final": final.prob_map, "positive": outcome.positive,
            "mean_score": outcome.mean_score}


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """Largest differences of ``other``'s maps from ``reference``'s (lung: fraction of pixels that differ)."""
    out = {"classifier": abs(reference["classifier"] - other["classifier"]),
           "final": float(np.max(np.abs(reference["final"] - other["final"]))),
           "lung_pixels_differ": float(np.mean(reference["lung"] != other["lung"])),
           "gate_agrees": float(reference["positive"] == other["positive"])}
    for name, ref_map in reference["maps"].items():
        if name in other["maps"]:
            out[name] = float(np.max(np.abs(ref_map - other["maps"][name])))
    return out


def run_precision(paths: list[Path], loaded, settings, device: torch.device, dtype, repeats: int) -> tuple[list[float], list[dict]]:
    """Warm up on every study, then time ``repeats`` passes; return the per-study seconds and the last outputs."""
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    outputs = []
    with torch.inference_mode():
        for path in paths:  # warm-up: kernels chosen, caches filled
            with autocast():
                one_study(path, loaded, settings)
        seconds = []
        for _ in range(repeats):
            outputs = []
            for path in paths:
                synchronize(device)
                started = time.perf_counter()
                with autocast():
                    outputs.append(one_study(path, loaded, settings))
                synchronize(device)
                seconds.append(time.perf_counter() - started)
    return seconds, outputs


def bench(models: Path, paths: list[Path], device: str, precisions: list[str], repeats: int, preset_name: str,
          tolerance: float) -> dict[str, Any]:
    from app.model_store import load_models
    from app.presets import get_preset
    from operators.lib.calibration import resolve

    torch_device = torch.device(device)
    preset = get_preset(preset_name)
    started = time.perf_counter()
    loaded = load_models(models, device, preset.nnunet_mirroring, preset.nnunet_tile_step, runtime="torch")
    load_s = time.perf_counter() - started
    settings = resolve(preset, loaded.manifest.calibration, loaded.map_names)
    results: dict[str, Any] = {}
    reference = None
    for name in precisions:
        seconds, outputs = run_precision(paths, loaded, settings, torch_device, PRECISIONS[name], repeats)
        if reference is None:
            reference = outputs
        diffs = [compare(ref, out) for ref, out in zip(reference, outputs)]
        worst = {key: max(d.get(key, 0.0) for d in diffs) for key in diffs[0] if key != "gate_agrees"}
        worst["gate_agrees"] = min(d["gate_agrees"] for d in diffs)
        map_keys = [k for k in worst if k not in ("lung_pixels_differ", "gate_agrees")]
        within = all(worst[k] <= tolerance for k in map_keys) and worst["lung_pixels_differ"] <= 1e-3 and worst["gate_agrees"] == 1.0
        results[name] = {"median_s_per_study": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
                         "max_diff_vs_fp32": worst, "within_tolerance": within}
    eligible = [n for n in precisions if results[n]["within_tolerance"]]
    recommended = min(eligible, key=lambda n: results[n]["median_s_per_study"]) if eligible else None
    gpu = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else None
    return {"models": str(models), "pack": loaded.manifest.pack, "device": device, "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "studies": len(paths), "repeats": repeats, "preset": preset_name,
            "model_load_s": round(load_s, 2), "tolerance": tolerance, "precisions": results, "recommended": recommended,
            "goal_s": GOAL_S,
            "goal_met": bool(recommended and results[recommended]["median_s_per_study"] <= GOAL_S)}


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU bench: {report['pack'].get('name', report['models'])} on {report['gpu'] or report['device']}", "",
             f"torch {report['torch']}, Python {report['python']}, {report['studies']} studies × {report['repeats']} repeats, "
             f"preset {report['preset']}, models loaded in {report['model_load_s']} s. Per study: decode, every network, the steps; "
             "DICOM writing not included.", "",
             "| precision | median s/study | min | max | largest map difference vs fp32 | lung pixels differing | gate agrees | within tolerance |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["precisions"].items():
        d = r["max_diff_vs_fp32"]
        worst_map = max((v for k, v in d.items() if k not in ("lung_pixels_differ", "gate_agrees")), default=0.0)
        lines.append(f"| {name} | {r['median_s_per_study']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {worst_map:.1e} | "
                     f"{d['lung_pixels_differ']:.1e} | {'yes' if d['gate_agrees'] == 1.0 else 'NO'} | {'yes' if r['within_tolerance'] else 'no'} |")
    rec = report["recommended"]
    lines += ["", f"Recommended: **{rec or 'none'}** (fastest within {report['tolerance']:g} of fp32); goal ≤ {report['goal_s']} s per study: "
              f"**{'met' if report['goal_met'] else 'not met'}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["production", "production-light-lung", "random"], default="production-light-lung")
    parser.add_argument("--models", type=Path, help="a models folder instead of a profile (e.g. the reference pack)")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16,fp16", help="comma-separated, fp32 first (the reference)")
    parser.add_argument("--preset", default="zones")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--dicom", type=Path, default=DEFAULT_DICOM, help="folder with rsna/*.dcm (default: tests/data/dicom)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "cxr-bench", help="where profile packs are built")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or precisions[0] != "fp32" or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions: fp32 first, then any of {', '.join(PRECISIONS)}")
    if args.models is not None:
        models, name = args.models, args.models.name
    elif args.profile == "random":
        from tools.random_model_pack import build_random_pack

        pack = args.cache / "random"
        models, name = (pack if (pack / "manifest.json").is_file() else build_random_pack(pack)), "random"
    else:
        from bench.production_pack import build_production_pack

        lung = "light" if args.profile == "production-light-lung" else "pspnet"
        models, name = build_production_pack(args.cache / args.profile, lung=lung), args.profile
    report = bench(models, study_paths(args.dicom, args.studies), args.device, precisions, args.repeats, args.preset, args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{name}" if report["device"].startswith("cuda") else f"gpu-{name}-on-{report['device']}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
