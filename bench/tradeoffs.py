"""Speed/accuracy trade-offs measured on a trained pack: which inference options the presets use.

    python -m bench.tradeoffs --models models --data DATA [--per-class 30] [--threads 1]

Every variant runs all models of the pack through the app's own wrappers (``app.model_store``) on the
same validation images (``training.pipeline.predict_records``: classifier, three experts, refinement
of every image, lung mask) and scores the result with the evaluation code (``training.evaluate``):

- ``baseline``: fp32, contiguous (NCHW) tensors, no test-time mirroring — the presets' settings;
- ``mirroring``: nnU-Net's 4-way test-time mirroring (experts and refinement);
- ``channels_last``: every network and its input in ``torch.channels_last``;
- ``bf16``: every forward under ``torch.autocast("cpu", torch.bfloat16)``, outputs back to fp32;
- ``onnxruntime``: every network exported to ONNX (static shapes, as the app runs them) and run by
  ONNX Runtime's CPU provider with the same thread count (needs ``onnxruntime``, not a dependency).

Reported per variant: median forward seconds of each network (per call), model seconds and wall
seconds per image, the largest map / score difference against ``baseline``, Dice on positives and
class-balanced log-loss of every map and of the final Zones map, gate AUC. A separate table times the
lung models: the pack's light U-Net and torchxrayvision's PSPNet at 512 px (production size; random
weights, speed only — its real weights are not available offline) and scores the light model's lung
masks against the dataset's. Writes ``bench/results/tradeoffs.json`` and ``.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any, Callable

import numpy as np
import psutil
import torch

from bench.bench import CACHE, REPO

VARIANTS = ("baseline", "mirroring", "channels_last", "bf16", "onnxruntime")


class TimedNetwork(torch.nn.Module):
    """Wraps one network: applies a variant to every forward and records its wall time.

    ``load_state_dict`` goes to the wrapped network (the app loads an nnU-Net fold's weights once, nnU-Net's
    stock predictor before every prediction); with ONNX Runtime the exported graph already holds the
    weights, so it is ignored.
    """

    def __init__(self, name: str, inner: torch.nn.Module, variant: str, onnx_path: Path | None = None, threads: int = 1):
        super().__init__()
        self.name, self.inner, self.variant = name, inner, variant
        self.seconds: list[float] = []
        self.session = None
        if variant == "channels_last":
            inner.to(memory_format=torch.channels_last)
        if variant == "onnxruntime":
            self.onnx_path, self.threads = onnx_path, threads

    def _ort_run(self, x: torch.Tensor) -> torch.Tensor:
        import onnxruntime as ort

        if self.session is None:
            if not self.onnx_path.is_file():
                export_onnx(self.inner, tuple(x.shape), self.onnx_path)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        output = self.session.run(None, {self.session.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        if self.variant == "onnxruntime":
            out = self._ort_run(x)
        elif self.variant == "channels_last":
            out = self.inner(x.contiguous(memory_format=torch.channels_last)).contiguous()
        elif self.variant == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = self.inner(x)
            out = out.float()
        else:
            out = self.inner(x)
        self.seconds.append(time.perf_counter() - started)
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102 - see class docstring
        if self.variant == "onnxruntime":
            return None
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)


def export_onnx(network: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Export ``network`` for one fixed input shape (the app always runs batch 1 at the model's size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(shape)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(network.eval(), (example,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)


def instrument(loaded, variant: str, onnx_dir: Path, threads: int) -> list[TimedNetwork]:
    """Replace every network of ``loaded`` (app ``LoadedModels``) by a :class:`TimedNetwork`."""
    wrappers = []

    def wrap(owner: Any, attribute: str, name: str) -> None:
        inner = getattr(owner, attribute)
        wrapper = TimedNetwork(name, inner, variant, onnx_dir / f"{name}.onnx", threads)
        setattr(owner, attribute, wrapper)
        wrappers.append(wrapper)

    wrap(loaded.classifier, "network", loaded.classifier.name)
    for model in loaded.experts + [loaded.refinement]:
        if hasattr(model, "predictor"):
            wrap(model.predictor, "network", model.name)
        else:
            wrap(model, "network", model.name)
    wrap(loaded.lung, "network", loaded.lung.name)
    return wrappers


def _metrics(pred, models: Path) -> dict[str, Any]:
    from training.evaluate import evaluate, pack_settings

    results, _, _ = evaluate(pred, pack_settings(models, pred, "zones"), pack_settings(models, pred, "weighted"))
    keep = {}
    for name, values in results["maps"].items():
        if name.startswith("lung prior"):
            continue
        keep[name] = {"dice_mean_pos": round(values["dice_mean_pos"], 4), "logloss": round(values["logloss_class_balanced"], 4)}
    return {"maps": keep, "gate_auc": round(results["scores"]["gate mean (final maps)"]["auc"], 4)}


def _differences(pred, base) -> dict[str, float]:
    """Largest absolute difference of each output against the baseline run."""
    out = {name: float(np.abs(pred.expert_maps[:, k].astype(np.float32) - base.expert_maps[:, k].astype(np.float32)).max())
           for k, name in enumerate(pred.expert_names)}
    out[pred.refinement_name] = float(np.abs(pred.refined.astype(np.float32) - base.refined.astype(np.float32)).max())
    out["classifier output"] = float(np.abs(pred.classifier_raw - base.classifier_raw).max())
    out["lung mask (fraction of pixels that differ)"] = float((pred.lungs != base.lungs).mean())
    return {k: float(f"{v:.3g}") for k, v in out.items()}


def run_variant(models: Path, records: list, variant: str, threads: int, onnx_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Predict ``records`` with one variant; returns (predictions, timings)."""
    from app.model_store import load_models
    from app.presets import get_preset
    from training.pipeline import predict_records

    preset = get_preset("zones", nnunet_mirroring=variant == "mirroring")
    loaded = load_models(models, "cpu", preset.nnunet_mirroring, preset.nnunet_tile_step)
    wrappers = instrument(loaded, variant, onnx_dir, threads)
    predict_records(models, records[:1], preset, loaded=loaded)  # warm-up (and ONNX export): not timed
    for wrapper in wrappers:
        wrapper.seconds.clear()
    started = time.perf_counter()
    pred = predict_records(models, records, preset, loaded=loaded)
    wall = (time.perf_counter() - started) / len(records)
    forwards = {w.name: {"median_s": round(median(w.seconds), 5), "calls_per_image": round(len(w.seconds) / len(records), 2)}
                for w in wrappers if w.seconds}
    model_seconds = sum(sum(w.seconds) for w in wrappers) / len(records)
    return pred, {"forward": forwards, "model_s_per_image": round(model_seconds, 4), "wall_s_per_image": round(wall, 4)}


def lung_models(models: Path, records: list, threads: int, repeats: int) -> dict[str, Any]:
    """Forward time of the pack's light lung model and of xrv's PSPNet at 512; the light model's lung Dice."""
    from app.model_store import load_models
    from bench.production_pack import build_production_pack
    from operators.lib.segmenters import XrvLungSegmenter
    from training.data import read_grey, read_mask
    from training.metrics import dice

    light = load_models(models, "cpu").lung
    production = CACHE / "production"
    if not (production / "manifest.json").is_file():
        build_production_pack(production)
    pspnet = XrvLungSegmenter("xrv_pspnet_lungs", production / "xrv_pspnet_lungs", torch.device("cpu"))

    def clock(fn: Callable[[], Any]) -> float:
        fn()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return round(median(samples), 4)

    with torch.inference_mode():
        x_light = torch.zeros(1, 1, light.input_size_px, light.input_size_px)
        x_psp = torch.zeros(1, 1, 512, 512)
        timings = {"light": clock(lambda: light.network(x_light)), "pspnet": clock(lambda: pspnet.network(x_psp))}
    dices = []
    for record in records:
        if record.lungs is None:
            continue
        image = read_grey(record.image).astype(np.float32) / 255.0
        dices.append(dice(light.predict_mask(image), read_mask(record.lungs, image.shape)))
    params = {"light": sum(p.numel() for p in light.network.parameters()), "pspnet": sum(p.numel() for p in pspnet.network.parameters())}
    return {"light_model": light.name, "light_input_px": light.input_size_px, "forward_s": timings, "parameters": params,
            "pspnet_over_light": round(timings["pspnet"] / timings["light"], 1),
            "light_lung_dice_mean": round(float(np.mean(dices)), 4) if dices else None, "lung_images": len(dices)}


def production_forwards(threads: int, repeats: int, variants: list[str], onnx_dir: Path) -> dict[str, dict[str, float]]:
    """Median forward seconds of each production-size network (random weights) under each speed variant
    (not bf16, which is already an order of magnitude slower on the reference pack on CPUs without bf16 units)."""
    from app.model_store import load_models
    from bench.production_pack import build_production_pack

    production = CACHE / "production"
    if not (production / "manifest.json").is_file():
        build_production_pack(production)
    table: dict[str, dict[str, float]] = {}
    # bf16 is left out: 10-20x slower than fp32 at reference size on a CPU without native bf16
    for variant in [v for v in variants if v in ("baseline", "channels_last", "onnxruntime")]:
        loaded = load_models(production, "cpu")
        for wrapper in instrument(loaded, variant, onnx_dir / "production", threads):
            model = next(m for m in [loaded.classifier, *loaded.experts, loaded.refinement, loaded.lung] if m.name == wrapper.name)
            channels = 3 if type(model).__name__ == "ConvNextFpnSegmenter" else 1
            x = torch.zeros(1, channels, model.input_size_px, model.input_size_px)
            print(f"  production {wrapper.name} {variant} …", flush=True)
            try:
                with torch.inference_mode():
                    wrapper(x)
                    wrapper.seconds.clear()
                    for _ in range(repeats):
                        wrapper(x)
                table.setdefault(wrapper.name, {})[variant] = round(median(wrapper.seconds), 4)
            except Exception as exc:  # e.g. an export that fails: recorded, the others still run
                table.setdefault(wrapper.name, {})[variant] = f"failed: {type(exc).__name__}"
    return table


def to_markdown(report: dict[str, Any]) -> str:
    variants = report["variants"]
    base = variants["baseline"]
    lines = [f"# Trade-offs on {report['models']} ({report['date']})", "",
             f"Machine: {report['machine']}. Threads: {report['threads']}. Images: {report['images']} "
             f"({report['positives']} COVID-19 positives) of the {report['split']} split.", "",
             "| variant | model s / image | × baseline | wall s / image | final Zones Dice | final Zones log-loss | gate AUC | largest map difference |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        if "error" in v:
            lines.append(f"| {name} | failed: {v['error']} | | | | | | |")
            continue
        ratio = v["timing"]["model_s_per_image"] / base["timing"]["model_s_per_image"]
        zones = v["metrics"]["maps"]["final: Zones"]
        diff = max((d for k, d in v.get("max_difference", {}).items() if not k.startswith("lung")), default=0.0)
        lines.append(f"| {name} | {v['timing']['model_s_per_image']:.3f} | {ratio:.2f} | {v['timing']['wall_s_per_image']:.3f} | "
                     f"{zones['dice_mean_pos']:.4f} | {zones['logloss']:.4f} | {v['metrics']['gate_auc']:.4f} | {diff:.3g} |")
    lines += ["", "Median forward seconds per call:", "", "| network | " + " | ".join(n for n in variants if "error" not in variants[n]) + " |",
              "|---|" + "---|" * sum("error" not in v for v in variants.values())]
    for net in base["timing"]["forward"]:
        cells = [f"{v['timing']['forward'][net]['median_s']:.4f}" for v in variants.values() if "error" not in v]
        lines.append(f"| {net} | " + " | ".join(cells) + " |")
    lines += ["", "Dice on positives / class-balanced log-loss per map:", "",
              "| map | " + " | ".join(n for n in variants if "error" not in variants[n]) + " |",
              "|---|" + "---|" * sum("error" not in v for v in variants.values())]
    for m in base["metrics"]["maps"]:
        cells = [f"{v['metrics']['maps'][m]['dice_mean_pos']:.4f} / {v['metrics']['maps'][m]['logloss']:.4f}"
                 for v in variants.values() if "error" not in v]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lung = report["lung"]
    lines += ["", "Lung models (forward alone, median s):", "",
              "| model | input | parameters | s |", "|---|---|---|---|",
              f"| {lung['light_model']} (small U-Net) | {lung['light_input_px']} | {lung['parameters']['light']:,} | {lung['forward_s']['light']} |",
              f"| xrv PSPNet (production) | 512 | {lung['parameters']['pspnet']:,} | {lung['forward_s']['pspnet']} |", "",
              f"PSPNet / light: {lung['pspnet_over_light']}×. Light model's lung Dice against the dataset's lung masks: "
              f"{lung['light_lung_dice_mean']} on {lung['lung_images']} images."]
    production = report.get("production_forward")
    if production:
        names = sorted({v for row in production.values() for v in row}, key=VARIANTS.index)
        lines += ["", f"Production-size networks (random weights), median forward s over {report['repeats']} calls:", "",
                  "| network | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for net, row in production.items():
            lines.append(f"| {net} | " + " | ".join(str(row.get(n, "")) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (committed results name no machine path)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder the training code reads (e.g. COVID-QU-Ex Train)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--per-class", type=int, default=30, help="images per class (COVID-19, Normal) from the split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="repeats for the lung-model forward timings")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--production", action="store_true", help="also time the production-size networks under each speed variant")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    from training.data import records_from

    torch.set_num_threads(args.threads)
    records = [r for r in records_from(args.data, [args.split]) if r.cls in ("COVID-19", "Normal")]
    by_class: dict[str, list] = {}
    for r in records:
        by_class.setdefault(r.cls, []).append(r)
    records = [r for members in by_class.values() for r in members[: args.per_class]]
    onnx_dir = Path(tempfile.mkdtemp(prefix="cxr_onnx_"))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "models": _shown_path(args.models), "split": args.split, "images": len(records),
        "positives": sum(r.label == 1 for r in records), "threads": args.threads, "repeats": args.repeats,
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB, "
                   f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "variants": {},
    }
    baseline = None
    try:
        for variant in ["baseline"] + [v for v in args.variants if v != "baseline"]:
            print(f"variant {variant} …", flush=True)
            try:
                pred, timing = run_variant(args.models, records, variant, args.threads, onnx_dir)
            except Exception as exc:  # an optional backend missing or an export failing is a result, not a crash
                report["variants"][variant] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                continue
            entry = {"timing": timing, "metrics": _metrics(pred, args.models)}
            if baseline is None:
                baseline = pred
            else:
                entry["max_difference"] = _differences(pred, baseline)
            report["variants"][variant] = entry
        report["lung"] = lung_models(args.models, records, args.threads, args.repeats)
        if args.production:
            report["production_forward"] = production_forwards(args.threads, args.repeats, args.variants, onnx_dir)
    finally:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tradeoffs.json").write_text(json.dumps(report, indent=1))
    (args.out / "tradeoffs.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
