"""Warm the writer up before the first study: one synthetic image's outputs, written and thrown away.

The first image's outputs cost about 0.4 s more than the next ones (0.68 s against 0.29 s for a
1024² CR): highdicom reads the standard's tables (JSON, 0.34 s) on first use, and PIL loads its
font. With a writer thread that cost lands on the second study, which it slows while the models
compute it (``docs/benchmark.md`` §0). :func:`warm_up` pays it once, at the start of the run on the
writer's own thread, through the same :func:`~operators.lib.case_outputs.write_processed` that
writes every study, into a hidden staging folder of the output folder
(:func:`~operators.lib.publish.staging_folder`: writable wherever results are, and tidied by the next
run if this one is killed) that is then removed.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from operators.lib.dicom_input import CxrImage
from operators.lib.publish import staging_folder
from operators.lib.results import ClassifierResult, ExpertResult, FinalResult, GateDecision, LungResult, RefinementResult
from operators.lib.seg_output import AlgorithmInfo

logger = logging.getLogger(__name__)

#: side of the synthetic image (pixels): small, so the warm-up costs the first-use work, not pixels
WARM_UP_SIDE_PX = 64
#: the staging folder's case name (``.writer-warm-up.<pid>.<random>.partial``; never a published name)
WARM_UP_CASE = "writer-warm-up"
#: Computed Radiography Image Storage
_CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def synthetic_source(side_px: int = WARM_UP_SIDE_PX) -> Dataset:
    """A minimal CR header (no pixel data) with fixed, derived UIDs: the kind of header the input step keeps."""
    ds = Dataset()
    ds.SOPClassUID = _CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-lung-opacity writer warm-up", "instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cxr-lung-opacity writer warm-up", "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-lung-opacity writer warm-up", "series"])
    ds.Modality = "CR"
    ds.PatientID = "WARMUP"
    ds.PatientName = "WARM^UP"
    ds.Rows = ds.Columns = side_px
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    return ds


def synthetic_result(side_px: int = WARM_UP_SIDE_PX) -> FinalResult:
    """A positive study on :func:`synthetic_source`: one opacity region inside a lung field."""
    source = synthetic_source(side_px)
    case = CxrImage(case_id=str(source.SOPInstanceUID), path=Path("writer-warm-up"), dataset=source,
                    pixels=np.linspace(0.0, 1.0, side_px * side_px, dtype=np.float32).reshape(side_px, side_px))
    lung = np.zeros((side_px, side_px), bool)
    lung[side_px // 8 : -side_px // 8, side_px // 8 : -side_px // 8] = True
    prob = np.where(lung, 0.3, 0.02).astype(np.float32)
    prob[side_px // 4 : side_px // 2, side_px // 4 : side_px // 2] = 0.9
    classifier = ClassifierResult(case, "classifier", 0.9, 0.0)
    experts = (ExpertResult(case, "expert", prob, 0.9, 0.0),)
    gate = GateDecision(case, classifier, experts, 0.9, 0.5, True)
    refinement = RefinementResult(gate, "refinement", prob, ((side_px // 4, side_px // 4, side_px // 2, side_px // 2),), 0.0)
    return FinalResult(refinement, LungResult(case, "lung", lung, 0.0), prob, prob >= 0.5, "zones")


def warm_up(algorithm: AlgorithmInfo, models: dict[str, Any], output: Path) -> float | None:
    """Write :func:`synthetic_result`'s outputs into a staging folder of ``output`` and remove it; return
    the seconds taken, or None when it failed (logged; a failed warm-up never stops a run)."""
    from operators.lib.case_outputs import write_processed

    started = time.perf_counter()
    folder = None
    try:
        folder = staging_folder(Path(output), WARM_UP_CASE)
        write_processed(folder, synthetic_result(), algorithm, models, folder)
    except Exception:  # the real writes will say what is wrong, with the study's name
        logger.warning("Writer warm-up failed; the first study pays the first-use costs instead", exc_info=True)
        return None
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.debug("Writer warmed up in %.2f s", seconds)
    return seconds
