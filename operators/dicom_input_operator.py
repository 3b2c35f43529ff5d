"""Input: walk the input folder and emit one decoded frontal chest radiograph per tick."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.background import background_pool
from operators.lib.case_naming import case_folder_name
from operators.lib.dicom_input import CxrImage, find_input_files, load_cxr
from operators.lib.errors import InputRejected
from operators.lib.run_report import Outcome, RunLedger

logger = logging.getLogger(__name__)


def timed_load(path: Path) -> tuple[CxrImage, float]:
    """:func:`load_cxr` with its case id still pending, and the seconds it took."""
    started = time.perf_counter()
    cxr = load_cxr(path, case_id="pending")
    return cxr, time.perf_counter() - started


class DicomCxrInputOperator(Operator):
    """Reads every file under the input folder, one accepted image per ``compute``.

    Named output:
        cxr: :class:`operators.lib.dicom_input.CxrImage`, one per accepted image.

    Non-DICOM files are skipped and other DICOMs refused, each with a reason recorded in the run
    ledger. The operator must be created with a ``BooleanCondition`` named ``"more_input"``; it
    disables that condition once the folder is exhausted, which ends the run.

    With ``read_ahead`` (the default) the next file is read and decoded on a background thread while
    the image just emitted is in the models; at most one image waits decoded. Outcomes are still
    recorded here, in file order, so a file that fails to read costs only itself.
    """

    OUTPUT = "cxr"

    def __init__(self, fragment: Fragment, *args, input_folder: Path, ledger: RunLedger, read_ahead: bool = True, **kwargs):
        self._folder = Path(input_folder)
        self._ledger = ledger
        self._pending: list[Path] | None = None
        self._next: tuple[Path, Future] | None = None  # the file being read ahead
        self._reader = background_pool("dicom-read", 1) if read_ahead else None
        self._case_ids: dict[str, Path] = {}  # result folder name -> its file (duplicate SOP Instance UIDs get _2, _3 …)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(self.OUTPUT)

    def _start_reading(self) -> None:
        """Begin reading the next pending file (on the reader thread, or here and now without one)."""
        if self._next is not None or not self._pending:
            return
        path = self._pending.pop(0)
        if self._reader is not None:
            future = self._reader.submit(timed_load, path)
        else:
            future = Future()
            try:
                future.set_result(timed_load(path))
            except Exception as exc:
                future.set_exception(exc)
        self._next = (path, future)

    def _take_next(self) -> tuple[Path, Future] | None:
        """The file being read (reading starts now if none is), handed over; None when no file is left."""
        self._start_reading()
        taken, self._next = self._next, None
        return taken

    def compute(self, op_input, op_output, context) -> None:
        if self._pending is None:
            self._pending, left_out = find_input_files(self._folder)
            for path, reason in left_out:
                logger.warning("Skipped %s", reason)
                self._ledger.record(path, Outcome.SKIPPED, reason)
            logger.info("Found %d files under %s", len(self._pending), self._folder)
        while (taken := self._take_next()) is not None:
            path, future = taken
            try:
                cxr, seconds = future.result()
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
            cxr = replace(cxr, case_id=case_id, warnings=tuple(warnings), decode_seconds=seconds)
            logger.info("Read %s as %s (%d×%d) in %.2fs", path, case_id, *cxr.shape, seconds)
            if self._reader is not None:
                self._start_reading()  # the next file is read while this image is in the models
            op_output.emit(cxr, self.OUTPUT)
            break
        if self._next is None and not self._pending:
            self.conditions["more_input"].disable_tick()

    def stop(self) -> None:
        """Let the reader thread go (a run that ends early drops the file read ahead)."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
