"""The per-image ``result.json``: scores, gate decision, preset, model versions, timings, outputs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from operators.lib.dicom_input import CxrImage
from operators.lib.results import FinalResult, StepFailure


def source_summary(case: CxrImage) -> dict[str, Any]:
    """Identifying facts about the source image."""
    ds = case.dataset
    return {
        "path": str(case.path),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "rows": case.shape[0],
        "columns": case.shape[1],
    }


def timings(final: FinalResult, write_seconds: float) -> dict[str, float]:
    """Seconds per step for this image."""
    gate = final.gate
    out = {"decode": final.case.decode_seconds, f"classifier:{gate.classifier.model_name}": gate.classifier.seconds}
    out.update({f"expert:{e.model_name}": e.seconds for e in gate.experts})
    out[f"lung:{final.lung.model_name}"] = final.lung.seconds
    out[f"refinement:{final.refinement.model_name}"] = final.refinement.seconds
    out["blend"] = final.seconds
    out["write"] = write_seconds
    return {key: round(float(value), 4) for key, value in out.items()}


def processed_report(final: FinalResult, preset: str, models: dict[str, Any], outputs: list[str], write_seconds: float,
                     computed_at: datetime | None = None) -> dict[str, Any]:
    """result.json of a processed image; ``computed_at``: when its last step finished and writing began."""
    gate = final.gate
    return {
        "case_id": final.case.case_id,
        "status": "processed",
        "source": source_summary(final.case),
        "preset": preset,
        "gate": {
            "scores": {k: round(v, 6) for k, v in gate.scores.items()},
            "mean_score": round(gate.mean_score, 6),
            "threshold": gate.threshold,
            "decision": "positive" if gate.positive else "negative",
        },
        "blend": final.blend,
        "blend_weights": final.blend_weights,
        "refined_boxes": [list(b) for b in final.refinement.boxes],
        "final": {
            "max_probability": round(float(np.max(final.prob_map)), 6),
            "opacity_fraction": round(float(np.mean(final.opacity_mask)), 6),
            "lung_fraction": round(float(np.mean(final.lung.mask)), 6),
        },
        "models": models,
        "timings_s": timings(final, write_seconds),
        "computed_at": computed_at.isoformat() if computed_at else None,
        "warnings": list(final.case.warnings),
        "outputs": outputs,
    }


def failed_report(failure: StepFailure, preset: str, models: dict[str, Any]) -> dict[str, Any]:
    """result.json of an image whose processing failed."""
    return {
        "case_id": failure.case.case_id,
        "status": "failed",
        "source": source_summary(failure.case),
        "preset": preset,
        "failed_step": failure.step,
        "reason": f"{failure.case.path}: step {failure.step} failed: {failure.message}",
        "models": models,
        "warnings": list(failure.case.warnings),
        "outputs": [],
    }
