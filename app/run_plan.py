"""What one run is: folders, models, the resolved settings — assembled once, described by a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import APP_NAME, __version__
from app.model_store import LoadedModels
from operators.lib.calibration import PipelineSettings, resolve
from operators.lib.run_report import RunLedger
from operators.lib.seg_output import AlgorithmInfo
from operators.lib.settings import BlendMode, Preset


@dataclass(frozen=True)
class RunPlan:
    """Everything the graph needs, resolved before it is built."""

    input_folder: Path
    output_folder: Path
    models: LoadedModels
    settings: PipelineSettings
    algorithm: AlgorithmInfo
    ledger: RunLedger
    device: str = "cpu"
    writer_threads: int = 1  # background threads writing results while the next image computes (0: inline)
    read_ahead: bool = True  # read and decode the next file while the current image is in the models


def make_plan(input_folder: Path, output_folder: Path, models: LoadedModels, preset: Preset, device: str = "cpu",
              ledger: RunLedger | None = None, writer_threads: int = 1, read_ahead: bool = True) -> RunPlan:
    """Resolve the preset against the pack's calibration (:func:`operators.lib.calibration.resolve`)."""
    settings = resolve(preset, models.manifest.calibration, models.map_names)
    algorithm = AlgorithmInfo(name=APP_NAME, version=__version__, preset=preset.name)
    return RunPlan(Path(input_folder), Path(output_folder), models, settings, algorithm, ledger or RunLedger(), device,
                   max(0, int(writer_threads)), bool(read_ahead))


def run_info(plan: RunPlan, torch_threads: int) -> dict[str, Any]:
    """The run-level part of ``summary.json``: app, preset, every resolved setting and where it came from."""
    settings, models = plan.settings, plan.models
    zones = settings.preset.blend is BlendMode.ZONES
    return {
        "app": {"name": APP_NAME, "version": __version__},
        "preset": settings.preset.name,
        "preset_description": settings.preset.description,
        "device": plan.device,
        "torch_threads": torch_threads,
        "writer_threads": plan.writer_threads,
        "read_ahead": plan.read_ahead,
        "gate_threshold": settings.gate_threshold,
        "gate_threshold_source": settings.sources["gate_threshold"],
        "scores": {name: score.to_dict() for name, score in settings.scores.items()},
        "scores_source": settings.sources["scores"],
        "zone_values": list(settings.preset.zone_values) if zones else None,
        "zone_values_source": settings.sources["zone_values"] if zones else None,
        "blend_weights": {} if zones else settings.blend_weights,
        "blend_weights_source": None if zones else settings.sources["blend_weights"],
        "model_pack": models.manifest.pack,
        "models": models.versions(),
        "model_load_s": {k: round(v, 3) for k, v in models.load_seconds.items()},
        "model_runtimes": dict(models.runtimes),
        "input": str(plan.input_folder),
        "output": str(plan.output_folder),
    }
