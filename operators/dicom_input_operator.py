"""Input: walk the input folder and emit one decoded frontal chest radiograph per tick."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.case_naming import case_folder_name
from operators.lib.dicom_input import find_input_files, load_cxr
from operators.lib.errors import InputRejected
from operators.lib.run_report import Outcome, RunLedger

logger = logging.getLogger(__name__)


class DicomCxrInputOperator(Operator):
    """Reads every file under the input folder, one accepted image per ``compute``.

    Named output:
        cxr: :class:`operators.lib.dicom_input.CxrImage`, one per accepted image.

    Non-DICOM files are skipped and other DICOMs refused, each with a reason recorded in the run
    ledger. The operator must be created with a ``BooleanCondition`` named ``"more_input"``; it
    disables that condition once the folder is exhausted, which ends the run.
    """

    OUTPUT = "cxr"

    def __init__(self, fragment: Fragment, *args, input_folder: Path, ledger: RunLedger, **kwargs):
        self._folder = Path(input_folder)
        self._ledger = ledger
        self._pending: list[Path] | None = None
        self._case_ids: dict[str, Path] = {}  # result folder name -> its file (duplicate SOP Instance UIDs get _2, _3 …)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(self.OUTPUT)

    def compute(self, op_input, op_output, context) -> None:
        if self._pending is None:
            self._pending, left_out = find_input_files(self._folder)
            for path, reason in left_out:
                logger.warning("Skipped %s", reason)
                self._ledger.record(path, Outcome.SKIPPED, reason)
            logger.info("Found %d files under %s", len(self._pending), self._folder)
        while self._pending:
            path = self._pending.pop(0)
            started = time.perf_counter()
            try:
                cxr = load_cxr(path, case_id="pending")
            except InputRejected as exc:
                reason = str(exc)
                outcome = Outcome.SKIPPED if "not a DICOM file" in reason or "unreadable DICOM" in reason else Outcome.REFUSED
                logger.warning("%s %s", outcome.value.capitalize(), reason)
                self._ledger.record(path, outcome, reason)
                continue
            except Exception as exc:  # a decoder crash on one file must not end the run
                logger.exception("Failed to read %s", path)
                self._ledger.record(path, Outcome.FAILED, f"{path}: reading failed ({type(exc).__name__}: {exc}).")
                continue
            case_id, warning = case_folder_name(str(cxr.dataset.get("SOPInstanceUID", "")), path, self._case_ids)
            if warning:
                logger.warning("%s: %s", path, warning)
            warnings = (*cxr.warnings, warning) if warning else cxr.warnings
            cxr = replace(cxr, case_id=case_id, warnings=tuple(warnings), decode_seconds=time.perf_counter() - started)
            logger.info("Read %s as %s (%d×%d) in %.2fs", path, case_id, *cxr.shape, time.perf_counter() - started)
            op_output.emit(cxr, self.OUTPUT)
            break
        if not self._pending:
            self.conditions["more_input"].disable_tick()
