"""Output: each image's results (operators/lib/case_outputs.py) staged, then published whole."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.case_outputs import write_failed, write_processed
from operators.lib.publish import clean_stale_staging, publish_folder, staging_folder
from operators.lib.results import FinalResult, StepFailure
from operators.lib.run_report import Outcome, RunLedger
from operators.lib.seg_output import AlgorithmInfo

logger = logging.getLogger(__name__)


class SegWriterOperator(Operator):
    """Named input: ``final`` (FinalResult or StepFailure).

    For each image, :func:`operators.lib.case_outputs.write_processed` (or ``write_failed``) writes
    into a hidden staging folder that is renamed to ``<output>/<case_id>/`` when complete
    (:mod:`operators.lib.publish`), so a crash never leaves a partial result; the outcome goes into the
    run ledger. A failure to write (a full disk) fails that image only.
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

    def _publish(self, case_id: str, write: Callable[[Path, Path], list[str]]) -> list[str]:
        target = self._output / case_id
        staging = staging_folder(self._output, case_id)
        try:
            outputs = write(staging, target)
            publish_folder(staging, target)
            return outputs
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def write(self, final: FinalResult) -> list[str]:
        """Write and publish one processed image's outputs; return their paths."""
        return self._publish(final.case.case_id, lambda folder, target: write_processed(folder, final, self._algorithm, self._models, target))

    def write_failure(self, failure: StepFailure) -> list[str]:
        return self._publish(failure.case.case_id, lambda folder, target: write_failed(folder, failure, self._algorithm, self._models, target))

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
        logger.info("Wrote %s → %s (positive: %s, max p %.2f)", case.path, self._output / case.case_id, item.gate.positive, item.prob_map.max())
        self._ledger.record(case.path, Outcome.PROCESSED, None, case.case_id, outputs)
