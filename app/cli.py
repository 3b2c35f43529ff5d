"""Command line: ``python -m app -i IN -o OUT -m MODELS [--preset NAME] [--device cpu|cuda] [--threads N] [--runtime auto|torch]``.

``-i/-o/-m`` (or HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH) are resolved by
the MONAI Deploy SDK's own app context; the other options are ours. Exit codes: see
:class:`operators.lib.run_report.ExitCode` and the README.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from app import APP_NAME, __version__
from app.presets import DEFAULT_PRESET, PRESETS, BlendMode, get_preset
from operators.lib.errors import ModelFolderError
from operators.lib.run_report import ExitCode, RunLedger

logger = logging.getLogger("app")
SUMMARY_NAME = "summary.json"
#: Signals whose handlers holoscan's ``Application.run`` replaces (at the C level) and leaves installed.
HOLOSCAN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signal_handlers_restored():
    """Give SIGINT/SIGTERM/SIGHUP back the handlers they had before the block (main thread only).

    Holoscan's run installs its own C handlers for these (a graceful stop while the graph runs) and
    leaves them installed after it returns; Python's ``signal.getsignal`` does not see them. A
    process that runs the app in-process and later forks (a ``multiprocessing`` pool, as nnU-Net's
    preprocessing uses) then has workers that ``SIGTERM`` cannot stop, and ``Pool.terminate`` waits
    for them forever.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    saved = {signum: signal.getsignal(signum) for signum in HOLOSCAN_SIGNALS} if main_thread else {}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def configured_preset(config_path: Path | None = None) -> str:
    """Preset from CXR_OPACITY_PRESET, else app.yaml's ``cxr_opacity.preset`` (HOLOSCAN_CONFIG_PATH or
    ./app.yaml beside the app), else the default."""
    if os.environ.get("CXR_OPACITY_PRESET"):
        return os.environ["CXR_OPACITY_PRESET"]
    candidates = [config_path] if config_path else [Path(p) for p in (os.environ.get("HOLOSCAN_CONFIG_PATH", ""),) if p]
    candidates.append(Path(__file__).resolve().parents[1] / "app.yaml")
    for path in candidates:
        if path.is_file():
            import yaml

            preset = ((yaml.safe_load(path.read_text()) or {}).get("cxr_opacity") or {}).get("preset")
            if preset:
                return str(preset)
    return DEFAULT_PRESET


def _device(value: str) -> str:
    if value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"device must be cpu, cuda or cuda:N; got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=f"{APP_NAME} {__version__}: chest X-ray lung opacity, "
                                     "DICOM in → DICOM SEG out. Research use only, not for clinical use.")
    parser.add_argument("-i", "--input", help="input folder of DICOM files (default: $HOLOSCAN_INPUT_PATH or ./input)")
    parser.add_argument("-o", "--output", help="output folder (default: $HOLOSCAN_OUTPUT_PATH or ./output)")
    parser.add_argument("-m", "--model", help="models folder with manifest.json (default: $HOLOSCAN_MODEL_PATH or ./models)")
    parser.add_argument("-l", "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARN", "ERROR"])
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help=f"write-up submission to reproduce (default: $CXR_OPACITY_PRESET, else app.yaml, else {DEFAULT_PRESET})")
    parser.add_argument("--device", default="cpu", type=_device, help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = one per core (default)")
    parser.add_argument("--writer-threads", type=int, default=1,
                        help="threads writing each image's outputs while the next image is computed; 0 = write inline (default 1)")
    parser.add_argument("--no-read-ahead", dest="read_ahead", action="store_false",
                        help="read each file only when the previous image is done (default: the next file is read and "
                             "decoded while the current image is in the models)")
    parser.add_argument("--runtime", choices=("auto", "torch"), default=os.environ.get("CXR_OPACITY_RUNTIME", "auto"),
                        help="auto: networks with a verified ONNX graph in the manifest run on ONNX Runtime (CPU), the "
                             "rest on torch; torch: every network on torch (default auto, or CXR_OPACITY_RUNTIME)")
    parser.add_argument("--mirroring", action="store_true", help="nnU-Net test-time mirroring (about 4× slower on CPU)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    return parser


def _resolve_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Input, output and model paths through the SDK's app context (CLI over HOLOSCAN_* over defaults)."""
    from monai.deploy.core import AppContext

    context = AppContext({key: value for key, value in (("input", args.input), ("output", args.output), ("model", args.model)) if value})
    return Path(context.input_path), Path(context.output_path), Path(context.model_path)


def _nested(input_folder: Path, output_folder: Path) -> str | None:
    """Why the two folders cannot be used together (one inside the other, or the same), or None:
    results written into the input would be read back as inputs by the next run."""
    inside, outside = input_folder.resolve(), output_folder.resolve()
    if outside == inside or outside.is_relative_to(inside):
        return f"Output folder {output_folder} is inside the input folder {input_folder}; its results would be read as inputs."
    if inside.is_relative_to(outside):
        return f"Input folder {input_folder} is inside the output folder {output_folder}; choose folders apart."
    return None


def _write_summary(ledger: RunLedger, output_folder: Path) -> bool:
    """Write summary.json; on failure (e.g. the disk filled up) log why and return False."""
    try:
        ledger.write_summary(output_folder / SUMMARY_NAME)
        return True
    except OSError as exc:
        logger.error("Cannot write %s: %s", output_folder / SUMMARY_NAME, exc)
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the app; return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, "WARNING" if args.log_level == "WARN" else args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every copied module at INFO
    if args.list_presets:
        for name, preset in PRESETS.items():
            print(f"{name:10s} {preset.description}")
        return int(ExitCode.OK)
    started = time.perf_counter()
    input_folder, output_folder, model_folder = _resolve_paths(args)
    if not input_folder.is_dir():
        logger.error("Input folder %s does not exist or is not a folder.", input_folder)
        return int(ExitCode.CONFIGURATION)
    nested = _nested(input_folder, output_folder)
    if nested:
        logger.error("%s", nested)
        return int(ExitCode.CONFIGURATION)
    try:
        output_folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_folder, prefix=f".write-test.{os.getpid()}.", suffix=".tmp"):
            pass
    except OSError as exc:
        logger.error("Output folder %s cannot be created or written: %s", output_folder, exc)
        return int(ExitCode.CONFIGURATION)

    # Thread settings, deliberately: the graph runs one operator at a time, so torch's intra-op pool
    # gets every core (or --threads). nnU-Net predicts in this process with no worker processes; its
    # nnUNet_def_n_proc would also cap torch's threads during a prediction (the one-fold wrapper
    # does not apply that cap; a multi-fold folder would), so it is the same number.
    threads = args.threads if args.threads > 0 else max(1, len(os.sched_getaffinity(0)))
    os.environ["nnUNet_def_n_proc"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        logger.error("--device %s requested but CUDA is not available; use --device cpu.", args.device)
        return int(ExitCode.CONFIGURATION)
    try:
        preset_name = args.preset or configured_preset()
        preset = get_preset(preset_name, nnunet_mirroring=True) if args.mirroring else get_preset(preset_name)
    except ValueError as exc:
        logger.error("%s", exc)
        return int(ExitCode.CONFIGURATION)

    if args.runtime not in ("auto", "torch"):
        logger.error("CXR_OPACITY_RUNTIME is %r; use auto or torch.", args.runtime)
        return int(ExitCode.CONFIGURATION)
    from app.model_store import load_models

    try:
        models = load_models(model_folder, device=args.device, nnunet_mirroring=preset.nnunet_mirroring,
                             nnunet_tile_step=preset.nnunet_tile_step, runtime=args.runtime)
    except ModelFolderError as exc:
        logger.error("Cannot start: %s", exc)
        return int(ExitCode.CONFIGURATION)
    logger.info("Models ready in %.1fs since start", time.perf_counter() - started)

    from app.app import LungOpacityApp
    from app.run_plan import make_plan, run_info

    plan = make_plan(input_folder, output_folder, models, preset, args.device, writer_threads=args.writer_threads,
                     read_ahead=args.read_ahead)
    if plan.settings.preset.blend is BlendMode.WEIGHTED and plan.settings.sources["blend_weights"].startswith("equal"):
        logger.warning("manifest.json lacks weighted_logloss for some maps; the Weighted blend uses equal weights.")
    ledger = plan.ledger
    ledger.info = run_info(plan, torch.get_num_threads())
    if models.manifest.pack.get("meaningful") is False:
        logger.warning("Model pack %r is random: its outputs MEAN NOTHING.", models.manifest.pack.get("name"))
    app = LungOpacityApp(plan, argv=[sys.argv[0]])
    try:
        with signal_handlers_restored():
            app.run()
    except Exception:
        logger.exception("The application failed")
        ledger.info["error"] = "the application failed; see the log"
        _write_summary(ledger, output_folder)
        return int(ExitCode.ERROR)
    if not _write_summary(ledger, output_folder):
        return int(ExitCode.ERROR)
    counts = ledger.counts()
    logger.info("Done in %.1fs: %s. Summary: %s", time.perf_counter() - started, counts, output_folder / SUMMARY_NAME)
    return int(ledger.exit_code())
