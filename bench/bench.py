"""Benchmark: the app on real DICOMs repeated to N studies, against bare model forwards and the naive path.

    python -m bench.bench --profile production --studies 8 [--threads 2] [--naive-studies 2] [--runtime both|torch|onnxruntime]

Profiles: ``production`` (production-size architectures, random weights; built once into
~/.cache/cxr-bench), ``random`` (the tiny test pack), or ``--models DIR`` (e.g. the reference pack).
Writes ``bench/results/<profile>.json`` and ``.md`` (medians over studies/repeats) so runs can be
compared across commits. A benchmark, not a test: it asserts nothing, it reports.

``--runtime both`` (the default) measures the two paths side by side in one run: every network on
torch (``--runtime torch``), then the same pack with its ONNX graphs exported as the MAP build exports
them (:mod:`app.export_graphs`) and run by ONNX Runtime (``--runtime auto``). The baselines for the
nnU-Net maps are nnU-Net's CLI (a process per image and model, as a script would call it) and the
stock ``nnUNetPredictor`` loaded once in this process (what a careful user would write).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import psutil
import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"
CACHE = Path(os.environ.get("CXR_BENCH_CACHE", Path.home() / ".cache" / "cxr-bench"))


def chest_sources(shared: Path = SHARED_DICOM) -> list[Path]:
    """The real chest DICOMs of shared/data/dicom (not the non-chest ones, one RG1 encoding)."""
    files = sorted((shared / "rsna").glob("*.dcm")) + [shared / "misc" / "nema_wg04_RG1_J2KR.dcm"]
    files += sorted((shared / "misc").glob("nih_*.dcm")) + sorted((shared / "misc").glob("siim_*.dcm"))
    return [f for f in files if f.is_file()]


def make_studies(sources: list[Path], count: int, folder: Path) -> list[Path]:
    """Copies of ``sources`` cycled to ``count`` files, each its own study (new Study/Series/SOP UIDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(count):
        ds = pydicom.dcmread(sources[index % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"study_{index:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _rss_after_first_and_last(trace: list[tuple[float, int, int]]) -> list[float]:
    """RSS (MB) when the first result appeared and at the last live sample: flat memory means these match."""
    live = [t for t in trace if t[2] > 0]
    if not live:
        return []
    first = next((t for t in live if t[1] >= 1), live[0])
    return [round(first[2] / 2**20, 1), round(live[-1][2] / 2**20, 1)]


def computed_times(results: list[dict[str, Any]]) -> list[float]:
    """When each image left the models (``result.json``'s ``computed_at``), as sorted epoch seconds."""
    return sorted(datetime.fromisoformat(r["computed_at"]).timestamp() for r in results if r.get("computed_at"))


def steady_study_seconds(computed: list[float], output_stamps: list[float]) -> float | None:
    """Seconds per study from the first image leaving the models (:func:`computed_times`) to the last
    output written, over the N − 1 studies after the first (N: one output per study).

    The window holds the compute of studies 2..N and every write, so a writer that lags (its thread
    yields to the forwards and catches up at the end) is counted in full; the intervals between
    outputs are not steady with a writer thread (the last ones come in a burst). It over-counts by
    at most one study's write, which shrinks with N.
    """
    if len(output_stamps) < 2 or not computed:
        return None
    return round((max(output_stamps) - min(computed)) / (len(output_stamps) - 1), 3)


def run_app(models: Path, inputs: Path, output: Path, threads: int, preset: str, mirroring: bool, runtime: str = "torch",
            writer_threads: int = 1, read_ahead: bool = True, app_repo: Path = REPO) -> dict[str, Any]:
    """Run ``python -m app`` of the checkout ``app_repo`` once; cold start, per-study wall times, per-step
    medians, peak RSS."""
    command = [sys.executable, "-m", "app", "-i", str(inputs), "-o", str(output), "-m", str(models), "--preset", preset,
               "--threads", str(threads), "-l", "WARN", "--runtime", "torch" if runtime == "torch" else "auto",
               "--writer-threads", str(writer_threads)]
    command += [] if read_ahead else ["--no-read-ahead"]
    command += ["--mirroring"] if mirroring else []
    env = {**os.environ, "PYTHONPATH": str(app_repo)}
    started = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", 'ulimit -s 32768; exec "$@"', "bash", *command], cwd=app_repo, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = psutil.Process(process.pid)
    peak_rss, first_output, rss_trace = 0, None, []
    while process.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [watcher, *watcher.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peak_rss = max(peak_rss, rss)
        done = len(list(output.glob("*/result.json"))) if output.exists() else 0
        rss_trace.append((round(time.perf_counter() - started, 2), done, rss))
        if first_output is None and done:
            first_output = time.perf_counter() - started
        time.sleep(0.1)
    total = time.perf_counter() - started
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"app exited {process.returncode}: {stderr[-2000:]}")
    results = [json.loads(p.read_text()) for p in output.glob("*/result.json")]
    runtimes = json.loads((output / "summary.json").read_text()).get("model_runtimes", {})
    stamps = sorted(p.stat().st_mtime for p in output.glob("*/result.json"))
    warm = [b - a for a, b in zip(stamps, stamps[1:])]
    computed = computed_times(results)
    steps: dict[str, list[float]] = {}
    for result in results:
        for step, seconds in result.get("timings_s", {}).items():
            key = step.split(":")[0] if step.split(":")[0] in ("classifier", "lung", "refinement") else step
            steps.setdefault(key, []).append(seconds)
    return {
        "studies": len(results),
        "model_runtimes": runtimes,
        "total_s": round(total, 2),
        "cold_start_s": round(first_output or float("nan"), 2),
        "warm_study_s_median": round(median(warm), 3) if warm else None,
        "warm_study_s_all": [round(w, 3) for w in warm],
        "warm_study_s_steady": steady_study_seconds(computed, stamps),
        "warm_study_s_between_outputs": round((stamps[-1] - stamps[0]) / (len(stamps) - 1), 3) if len(stamps) > 1 else None,
        "computed_intervals_s": [round(b - a, 3) for a, b in zip(computed, computed[1:])],
        "steps_s_median": {k: round(median(v), 4) for k, v in sorted(steps.items())},
        "refined_crops_median": median(len(r.get("refined_boxes", [])) for r in results) if results else 0,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "rss_mb_after_first_and_last": _rss_after_first_and_last(rss_trace),
    }


def network_and_shape(wrapper) -> tuple[Any, tuple[int, ...]]:
    """The network a wrapper runs (torch module or :class:`OnnxNetwork`) and the input shape it sees."""
    if hasattr(wrapper, "graph_target"):
        return wrapper.graph_target()
    return wrapper.network, (1, 1, wrapper.input_size_px, wrapper.input_size_px)  # xrv's PSPNet: one channel, 512 px


def bare_forwards(models_dir: Path, threads: int, repeats: int, mirroring: bool, runtime: str = "torch") -> dict[str, float]:
    """Median seconds of each network's forward pass alone (same threads; inputs of the real sizes), on
    the runtime the app uses for it (``runtime``: "torch", or "onnxruntime" for every verified graph)."""
    import torch

    from app.model_store import load_models

    torch.set_num_threads(threads)
    models = load_models(models_dir, nnunet_mirroring=mirroring, runtime="torch" if runtime == "torch" else "auto")
    timings: dict[str, float] = {}

    def clock(name: str, fn) -> None:
        fn()  # warm-up
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        timings[name] = median(samples)

    with torch.inference_mode():
        for name, wrapper in [("classifier", models.classifier), *[(e.name, e) for e in models.experts],
                              ("refinement", models.refinement), ("lung", models.lung)]:
            network, shape = network_and_shape(wrapper)
            x = torch.zeros(shape)
            flips = [(), (2,), (3,), (2, 3)] if mirroring and hasattr(wrapper, "predictor") else [()]
            clock(name, lambda net=network, x=x, flips=flips: [net(torch.flip(x, f) if f else x) for f in flips])
    return {k: round(v, 4) for k, v in timings.items()}


def with_graphs(models: Path, folder: Path) -> Path:
    """A copy of ``models`` with its ONNX graphs exported, as the MAP build exports them."""
    from app.export_graphs import export_graphs

    shutil.copytree(models, folder)
    export_graphs(folder)
    return folder


def stock_predictors(models_dir: Path, cards) -> dict[str, Any]:
    """nnU-Net's own ``nnUNetPredictor`` for each card, loaded once (the app's tile step, no mirroring)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictors = {}
    for card in cards:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(models_dir / card.name), use_folds=(int(card.options.get("fold", 0)),),
                                                       checkpoint_name="checkpoint_final.pth")
        predictors[card.name] = predictor
    return predictors


def naive_path(models_dir: Path, studies: list[Path], workdir: Path, threads: int, graphs_dir: Path | None = None) -> dict[str, Any]:
    """The same maps the way a user would make them without this project, per study: each nnU-Net via
    ``nnUNetv2_predict_from_modelfolder`` on a PNG (a process per model, as its CLI works) and via the
    stock ``nnUNetPredictor`` loaded once in this process, the torchxrayvision models through xrv's own
    preprocessing. Compared with our in-process wrappers on torch and, with ``graphs_dir`` (the pack
    with its graphs), on ONNX Runtime."""
    import torch
    from PIL import Image

    from app.model_store import ModelRole, load_models, read_manifest
    from operators.lib.dicom_input import load_cxr
    from operators.lib.preprocessing import resize

    torch.set_num_threads(threads)
    manifest = read_manifest(models_dir)
    models = load_models(models_dir)
    nnunets = [card for card in manifest.models if card.architecture.value == "nnunet-2d" and card.role is not ModelRole.REFINEMENT]
    stock = stock_predictors(models_dir, nnunets)
    onnx_models = load_models(graphs_dir, runtime="auto") if graphs_dir else None
    per_study = []
    for study in studies:
        cxr = load_cxr(study, "bench")
        row: dict[str, Any] = {"study": study.name, "naive_s": 0.0, "ours_s": 0.0, "max_abs_diff": {},
                               "nnunet_cli_s": 0.0, "nnunet_stock_predictor_s": 0.0, "nnunet_ours_torch_s": 0.0, "nnunet_ours_onnx_s": 0.0}
        for card in nnunets:
            ours_model = next(e for e in models.experts if e.name == card.name)
            size = card.input_size_px
            image8 = np.clip(np.round(resize(cxr.pixels, (size, size)) * 255), 0, 255).astype(np.uint8)
            folder_in, folder_out = workdir / f"{card.name}_in", workdir / f"{card.name}_out"
            shutil.rmtree(folder_in, ignore_errors=True)
            shutil.rmtree(folder_out, ignore_errors=True)
            folder_in.mkdir(parents=True)
            Image.fromarray(image8).save(folder_in / "case_0000.png")
            started = time.perf_counter()
            subprocess.run(["nnUNetv2_predict_from_modelfolder", "-i", str(folder_in), "-o", str(folder_out), "-m",
                            str(models_dir / card.name), "-f", "0", "--save_probabilities", "--disable_tta", "-npp", "1", "-nps", "1",
                            "-device", "cpu", "--disable_progress_bar"], check=True, capture_output=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads), "nnUNet_def_n_proc": str(threads)})
            row["naive_s"] += time.perf_counter() - started
            row["nnunet_cli_s"] += time.perf_counter() - started
            naive = np.load(folder_out / "case.npz")["probabilities"][1, 0]
            started = time.perf_counter()
            _, stock_probabilities = stock[card.name].predict_single_npy_array(image8.astype(np.float32)[None, None], {"spacing": [999.0, 1.0, 1.0]},
                                                                                None, None, True)
            row["nnunet_stock_predictor_s"] += time.perf_counter() - started
            started = time.perf_counter()
            ours = ours_model.predict_square(image8.astype(np.float32) / 255.0)
            row["ours_s"] += time.perf_counter() - started
            row["nnunet_ours_torch_s"] += time.perf_counter() - started
            row["max_abs_diff"][card.name] = float(np.abs(naive - ours).max())
            row["max_abs_diff"][f"{card.name} (stock predictor)"] = float(np.abs(stock_probabilities[1, 0] - ours).max())
            if onnx_models:
                onnx_model = next(e for e in onnx_models.experts if e.name == card.name)
                started = time.perf_counter()
                ours_onnx = onnx_model.predict_square(image8.astype(np.float32) / 255.0)
                row["nnunet_ours_onnx_s"] += time.perf_counter() - started
                row["max_abs_diff"][f"{card.name} (onnx)"] = float(np.abs(ours_onnx - ours).max())
        # torchxrayvision DenseNet through xrv's own preprocessing (skimage resize) vs ours (torch antialias)
        import torchxrayvision as xrv

        started = time.perf_counter()
        from operators.lib.segmenters import XrvOpacityClassifier

        card = manifest.by_role(ModelRole.CLASSIFIER)[0]
        model = XrvOpacityClassifier(card.name, models_dir / card.name, torch.device("cpu")).network  # loaded per study, as a script would
        img = xrv.datasets.normalize((cxr.pixels * 255).astype(np.float32), 255)[None]
        img = xrv.datasets.XRayResizer(224)(xrv.datasets.XRayCenterCrop()(img))
        with torch.inference_mode():
            naive_score = float(model(torch.from_numpy(img)[None])[0, model.targets.index("Lung Opacity")])
        row["naive_s"] += time.perf_counter() - started
        started = time.perf_counter()
        ours_score = models.classifier.predict(cxr.pixels)
        row["ours_s"] += time.perf_counter() - started
        row["max_abs_diff"]["xrv_densenet121_all (score)"] = abs(naive_score - ours_score)
        row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        per_study.append(row)
    keys = ("naive_s", "ours_s", "nnunet_cli_s", "nnunet_stock_predictor_s", "nnunet_ours_torch_s", "nnunet_ours_onnx_s")
    return {"per_study": per_study, **{f"{k}_median": median(r[k] for r in per_study) for k in keys}}


def _diff(naive: dict[str, Any], keep) -> str:
    values = [v for r in naive["per_study"] for k, v in r["max_abs_diff"].items() if keep(k)]
    return f"{max(values):.2e}" if values else "n/a"


def to_markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    names = list(runs)
    lines = [f"# Benchmark: {report['profile']} ({report['date']})", "",
             f"Machine: {report['machine']}. Threads: {report['threads']}. Preset: {report['preset']}, mirroring "
             f"{'on' if report['mirroring'] else 'off'}. Studies: {runs[names[0]]['app']['studies']}. One run of "
             f"`{report['command']}` (app at commit {report.get('app_commit', 'unknown')}); every column below comes from it "
             f"(same machine, same load).", "",
             "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, value) -> None:
        lines.append(f"| {label} | " + " | ".join(str(value(runs[n])) for n in names) + " |")

    row("cold start (process start → first output), s", lambda r: r["app"]["cold_start_s"])
    row("warm time per study (median interval between outputs), s", lambda r: r["app"]["warm_study_s_median"])
    row("sum of bare forwards per study, s", lambda r: r["bare_sum_per_study_s"])
    row("overhead ratio (median interval / bare sum of the same runtime)", lambda r: r["overhead_ratio"])
    row("warm time per study, steady (first image computed → last output written, / (studies − 1)), s",
        lambda r: r["app"].get("warm_study_s_steady"))
    row("overhead ratio, steady (target ≤ 1.10)", lambda r: r.get("overhead_ratio_steady"))
    row("warm time per study, first to last output / (studies − 1), s", lambda r: r["app"].get("warm_study_s_between_outputs"))
    row("intervals between outputs, s", lambda r: ", ".join(str(w) for w in r["app"]["warm_study_s_all"]))
    row("intervals between images leaving the models, s", lambda r: ", ".join(str(w) for w in r["app"].get("computed_intervals_s", [])))
    row("peak RSS, MB", lambda r: r["app"]["peak_rss_mb"])
    row("RSS after first output → at end, MB", lambda r: " → ".join(str(v) for v in r["app"]["rss_mb_after_first_and_last"]))
    row("networks on ONNX Runtime", lambda r: sum(v == "onnxruntime" for v in r["app"]["model_runtimes"].values()))
    row("writer threads", lambda r: r.get("writer_threads", 0))
    row("read ahead", lambda r: "yes" if r.get("read_ahead", False) else "no")
    if "torch" in runs and "onnxruntime" in runs and all(runs[n]["app"].get("warm_study_s_steady") for n in runs):
        t, o = runs["torch"], runs["onnxruntime"]
        lines += ["", f"ONNX Runtime vs torch, same run: warm per study (steady) {t['app']['warm_study_s_steady'] / o['app']['warm_study_s_steady']:.2f}× "
                      f"faster, bare forwards {t['bare_sum_per_study_s'] / o['bare_sum_per_study_s']:.2f}× faster."]
        if "torch, no overlap" in runs:
            old = runs["torch, no overlap"]["app"]
            lines.append(f"No overlap on torch (writer inline, no read-ahead) → ONNX Runtime with overlap: warm per study (steady) "
                         f"{old['warm_study_s_steady']} → {o['app']['warm_study_s_steady']} s "
                         f"({old['warm_study_s_steady'] / o['app']['warm_study_s_steady']:.2f}×), cold start {old['cold_start_s']} → "
                         f"{o['app']['cold_start_s']} s.")
    if report.get("naive"):
        naive = report["naive"]
        lines += ["", "Baselines (median seconds per study over the same studies):", "", "| path | s |", "|---|---|",
                  f"| naive path (nnUNetv2_predict per image and model + xrv preprocessing) | {naive['naive_s_median']:.2f} |",
                  f"| same maps through this project's wrappers (torch) | {naive['ours_s_median']:.2f} |",
                  f"| nnU-Net maps: nnU-Net CLI, a process per image and model | {naive['nnunet_cli_s_median']:.2f} |",
                  f"| nnU-Net maps: stock nnUNetPredictor loaded once, one process | {naive['nnunet_stock_predictor_s_median']:.2f} |",
                  f"| nnU-Net maps: this project's wrapper, torch | {naive['nnunet_ours_torch_s_median']:.2f} |"]
        if naive.get("nnunet_ours_onnx_s_median"):
            lines.append(f"| nnU-Net maps: this project's wrapper, ONNX Runtime | {naive['nnunet_ours_onnx_s_median']:.2f} |")
        best = min(v for v in (naive["nnunet_ours_torch_s_median"], naive.get("nnunet_ours_onnx_s_median") or float("inf")))
        lines += ["", f"Speed-up of the nnU-Net maps: {naive['nnunet_cli_s_median'] / best:.1f}× vs the CLI, "
                      f"{naive['nnunet_stock_predictor_s_median'] / best:.2f}× vs the stock predictor loaded once; "
                      f"whole naive path {naive['naive_s_median'] / max(naive['ours_s_median'], 1e-9):.1f}× (target ≥ 2).",
                  f"Largest differences: nnU-Net maps vs the CLI {_diff(naive, lambda k: '(' not in k)}, vs the stock predictor "
                  f"{_diff(naive, lambda k: 'stock' in k)}, ONNX Runtime vs torch {_diff(naive, lambda k: 'onnx' in k)}; xrv score "
                  f"(xrv's skimage resize vs ours) {_diff(naive, lambda k: 'score' in k)}."]
    for name in names:
        if "inline" in name:
            continue  # same networks as the run before it
        app, bare = runs[name]["app"], runs[name]["bare_forward_s"]
        lines += ["", f"{name}: per step, median seconds per study:", "", "| step | s |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in app["steps_s_median"].items()]
        lines += ["", f"{name}: bare forward passes alone, median seconds:", "", "| model | s |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in bare.items()]
    return "\n".join(lines) + "\n"


def _commit(repo: Path) -> str:
    """The commit the benchmarked app was run from (``+`` when its tracked files were changed), or "unknown"."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD"]).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["production", "production-light-lung", "random"], default="production",
                        help="production: production-size networks with xrv's PSPNet lung model; production-light-lung: "
                             "the same with the project's light lung U-Net (the chosen default, bench/results/tradeoffs.md)")
    parser.add_argument("--models", type=Path, help="a models folder to benchmark instead of a profile (e.g. the reference pack)")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each bare forward")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--preset", default="zones")
    parser.add_argument("--mirroring", action="store_true")
    parser.add_argument("--naive-studies", type=int, default=2, help="studies run through the naive path (0 = skip)")
    parser.add_argument("--runtime", choices=["both", "torch", "onnxruntime"], default="both",
                        help="torch, onnxruntime (graphs exported as the MAP build does), or both side by side (default)")
    parser.add_argument("--writer-threads", type=int, default=1, help="the app's --writer-threads (default 1)")
    parser.add_argument("--also-no-overlap", action="store_true",
                        help="add a run of each runtime with --writer-threads 0 --no-read-ahead, to measure the overlap")
    parser.add_argument("--app-repo", type=Path, default=REPO,
                        help="run the app of another checkout (e.g. a git worktree of an older commit) under this harness")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    os.environ["nnUNet_def_n_proc"] = str(args.threads)  # the stock predictor's thread cap, as the app sets it

    if args.models:
        models, profile = args.models, args.models.name
    elif args.profile.startswith("production"):
        from bench.production_pack import build_production_pack

        lung = "light" if args.profile == "production-light-lung" else "pspnet"
        models, profile = build_production_pack(CACHE / args.profile, lung=lung), args.profile
    else:
        from tools.random_model_pack import build_random_pack

        models, profile = build_random_pack(CACHE / "random"), "random"
    runtimes = ["torch", "onnxruntime"] if args.runtime == "both" else [args.runtime]
    plan = [(runtime, runtime, args.writer_threads, True) for runtime in runtimes]
    if args.also_no_overlap:
        plan += [(f"{runtime}, no overlap", runtime, 0, False) for runtime in runtimes]
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as temporary:
        work = Path(temporary)
        studies = make_studies(chest_sources(), args.studies, work / "in")
        graphs = with_graphs(models, work / "graphs" / models.name) if "onnxruntime" in runtimes else None
        bare_by_runtime: dict[str, dict[str, float]] = {}
        for label, runtime, writer_threads, read_ahead in plan:
            pack = models if runtime == "torch" else graphs
            print(f"Running the app on {len(studies)} studies with {profile} models: {label}…", flush=True)
            app = run_app(pack, work / "in", work / f"out_{len(runs)}", args.threads, args.preset, args.mirroring, runtime, writer_threads,
                          read_ahead, args.app_repo.resolve())
            if runtime not in bare_by_runtime:
                print(f"Timing bare forward passes on {runtime}…", flush=True)
                bare_by_runtime[runtime] = bare_forwards(pack, args.threads, args.repeats, args.mirroring, runtime)
            bare = bare_by_runtime[runtime]
            bare_sum = sum(v for k, v in bare.items() if k != "refinement") + bare.get("refinement", 0) * app["refined_crops_median"]
            runs[label] = {"app": app, "writer_threads": writer_threads, "read_ahead": read_ahead, "bare_forward_s": bare,
                           "bare_sum_per_study_s": round(bare_sum, 3),
                           "overhead_ratio": round(app["warm_study_s_median"] / bare_sum, 3) if app["warm_study_s_median"] else None,
                           "overhead_ratio_steady": round(app["warm_study_s_steady"] / bare_sum, 3) if app["warm_study_s_steady"] else None}
        naive = naive_path(models, studies[: args.naive_studies], work / "naive", args.threads, graphs) if args.naive_studies else None
    report = {
        "profile": profile, "date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "preset": args.preset,
        "mirroring": args.mirroring, "command": "python -m bench.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "app_commit": _commit(args.app_repo),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB, "
                   f"{platform.processor() or platform.platform()}",
        "runs": runs, "naive": naive,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{profile}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{profile}.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
