"""Output: for each image, two DICOM SEGs, a heat-map Secondary Capture, an SR, a preview PNG and
result.json, written atomically."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.case_report import failed_report, processed_report
from operators.lib.components import component_boxes
from operators.lib.preview import render_preview, save_png_atomically, with_title
from operators.lib.results import FinalResult, StepFailure
from operators.lib.run_report import Outcome, RunLedger, write_json_atomically
from operators.lib.sc_output import SC_MAX_SIDE_PX, build_heatmap_secondary_capture
from operators.lib.seg_output import AlgorithmInfo, build_binary_seg, build_probability_seg, write_dataset_atomically
from operators.lib.sr_output import build_opacity_sr

logger = logging.getLogger(__name__)

PROBABILITY_SEG = "seg_probability.dcm"
BINARY_SEG = "seg_binary.dcm"
SC_HEATMAP = "sc_heatmap.dcm"
SR_OPACITY = "sr_opacity.dcm"
PREVIEW = "preview.png"
#: longest side of preview.png (render_preview's default)
PREVIEW_MAX_SIDE_PX = 1024
RESULT = "result.json"
#: Opacity regions (connected components of the mask, largest first) reported with 2D coordinates in the SR.
SR_MAX_REGIONS = 8


#: Hidden names a run writes into the output folder before renaming: ``.<case>.<pid>.<random>.partial``
#: (staging folders), ``.<case>.old-<pid>`` (a previous result being replaced) and
#: ``.<name>.<pid>.<random>.tmp`` (summary.json being written).
_STAGING = re.compile(r"^\.(?P<case>.+)\.(?P<pid>\d+)\.[^.]+\.partial$")
_OLD = re.compile(r"^\.(?P<case>.+)\.old-(?P<pid>\d+)$")
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp$")


def publish_folder(staging: Path, final: Path) -> None:
    """Move a fully written staging folder to its final name; an older result is replaced whole."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own name from an earlier life of this pid (a container restarts as pid 1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(output: Path) -> list[str]:
    """Tidy what an interrupted run (killed, power loss) left in ``output``; return what was done.

    Only hidden names this writer creates are touched, and only when the process that made them is
    gone: staging folders and temporary files are removed; a ``.<case>.old-<pid>`` folder (a
    complete earlier result caught between the two renames of :func:`publish_folder`) is put back
    when ``<case>`` is missing, else removed. Visible results are never touched.
    """
    done: list[str] = []
    try:
        entries = list(os.scandir(output))
    except OSError:
        return done
    for entry in entries:
        for pattern in (_STAGING, _OLD, _TEMPORARY):
            match = pattern.match(entry.name)
            if match is None or _alive(int(match["pid"])):
                continue
            path = Path(entry.path)
            try:
                if pattern is _OLD and not (output / match["case"]).exists():
                    os.replace(path, output / match["case"])
                    done.append(f"restored {match['case']} from {entry.name}")
                elif entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                    done.append(f"removed {entry.name}")
                else:
                    path.unlink()
                    done.append(f"removed {entry.name}")
            except OSError as exc:
                logger.warning("Could not tidy %s left by an interrupted run: %s", path, exc)
            break
    for line in done:
        logger.warning("Output folder %s: %s (left by an interrupted run).", output, line)
    return done


class SegWriterOperator(Operator):
    """Named input: ``final`` (FinalResult or StepFailure).

    File output, under ``<output>/<case_id>/``: ``seg_probability.dcm`` (FRACTIONAL PROBABILITY SEG),
    ``seg_binary.dcm`` (BINARY SEG: opacity, lung), ``sc_heatmap.dcm`` (Secondary Capture with the heat
    map burned in, NOT FOR DIAGNOSTIC USE), ``sr_opacity.dcm`` (TID 1500 SR: score, decision, regions,
    reference to the SEG), ``preview.png``, ``result.json``. Files are
    written into a hidden staging folder that is renamed into place when complete, so a crash never
    leaves a partial result. A failed image gets only ``result.json`` with the reason.
    """

    INPUT = "final"

    def __init__(self, fragment: Fragment, *args, output_folder: Path, ledger: RunLedger, algorithm: AlgorithmInfo,
                 model_versions: dict[str, Any], **kwargs):
        self._output = Path(output_folder)
        self._ledger = ledger
        self._algorithm = algorithm
        self._models = model_versions
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)

    def start(self) -> None:
        """Before the first image: remove staging folders and temporary files of an interrupted run."""
        clean_stale_staging(self._output)

    def _staging(self, case_id: str) -> Path:
        self._output.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{case_id}.{os.getpid()}.", suffix=".partial", dir=self._output))
        staging.chmod(0o755)  # mkdtemp makes it 0700; the published result folder is for others to read
        return staging

    def write(self, final: FinalResult) -> list[str]:
        """Write one processed image's outputs; return their paths."""
        started = time.perf_counter()
        case = final.case
        staging = self._staging(case.case_id)
        try:
            prob_seg = build_probability_seg(case.dataset, final.prob_map, self._algorithm)
            binary_seg = build_binary_seg(case.dataset, final.opacity_mask, final.lung.mask, self._algorithm)
            write_dataset_atomically(prob_seg, staging / PROBABILITY_SEG)
            write_dataset_atomically(binary_seg, staging / BINARY_SEG)
            gate = final.gate
            decision = "positive" if gate.positive else "negative"
            title = f"{gate.mean_score:.2f} {decision} · {self._algorithm.preset}"
            heatmap_image = render_preview(case.pixels, final.prob_map, final.opacity_mask, max_side_px=SC_MAX_SIDE_PX)
            if max(heatmap_image.size) <= PREVIEW_MAX_SIDE_PX:  # the same picture: render once, add the title
                preview = with_title(heatmap_image, title)
            else:
                preview = render_preview(case.pixels, final.prob_map, final.opacity_mask, max_side_px=PREVIEW_MAX_SIDE_PX, title=title)
            save_png_atomically(preview, staging / PREVIEW)
            heatmap = np.asarray(heatmap_image)
            caption = f"opacity score {gate.mean_score:.2f} ({decision}, threshold {gate.threshold:.2f}), preset {self._algorithm.preset}"
            write_dataset_atomically(build_heatmap_secondary_capture(case.dataset, heatmap, self._algorithm, caption=caption),
                                     staging / SC_HEATMAP)
            sr = build_opacity_sr(case.dataset, binary_seg, gate.mean_score, gate.positive, gate.threshold, self._algorithm,
                                  regions=component_boxes(final.opacity_mask, SR_MAX_REGIONS))
            write_dataset_atomically(sr, staging / SR_OPACITY)
            target = self._output / case.case_id
            outputs = [str(target / name) for name in (PROBABILITY_SEG, BINARY_SEG, SC_HEATMAP, SR_OPACITY, PREVIEW, RESULT)]
            report = processed_report(final, self._algorithm.preset, self._models, outputs, time.perf_counter() - started)
            write_json_atomically(report, staging / RESULT)
            publish_folder(staging, target)
            return outputs
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def write_failure(self, failure: StepFailure) -> list[str]:
        staging = self._staging(failure.case.case_id)
        try:
            write_json_atomically(failed_report(failure, self._algorithm.preset, self._models), staging / RESULT)
            publish_folder(staging, self._output / failure.case.case_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return [str(self._output / failure.case.case_id / RESULT)]

    def compute(self, op_input, op_output, context) -> None:
        item = op_input.receive(self.INPUT)
        case = item.case
        if isinstance(item, StepFailure):
            reason = f"{case.path}: step {item.step} failed: {item.message}"
            try:
                outputs = self.write_failure(item)
            except Exception as exc:  # the failure report itself could not be written (e.g. a full disk)
                logger.exception("Writing the failure report for %s failed", case.path)
                reason += f" (and its result.json could not be written: {type(exc).__name__}: {exc})"
                outputs = []
            self._ledger.record(case.path, Outcome.FAILED, reason, case.case_id, outputs)
            return
        try:
            outputs = self.write(item)
        except Exception as exc:  # e.g. a full or read-only output folder: this image fails, the run goes on
            logger.exception("Writing results for %s failed", case.path)
            self._ledger.record(case.path, Outcome.FAILED, f"{case.path}: writing results failed ({type(exc).__name__}: {exc}).", case.case_id)
            return
        logger.info("Wrote %s → %s (%s, max p %.2f)", case.path, self._output / case.case_id,
                    "positive" if item.gate.positive else "negative", float(item.prob_map.max()))
        self._ledger.record(case.path, Outcome.PROCESSED, None, case.case_id, outputs)
