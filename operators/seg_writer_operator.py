"""Output: each image's results (operators/lib/case_outputs.py) staged, then published whole."""

from __future__ import annotations

import logging
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.background import background_pool
from operators.lib.case_outputs import write_failed, write_processed
from operators.lib.publish import clean_stale_staging, publish_folder, staging_folder
from operators.lib.results import FinalResult, StepFailure
from operators.lib.run_report import Outcome, RunLedger
from operators.lib.seg_output import AlgorithmInfo
from operators.lib.writer_warmup import warm_up

logger = logging.getLogger(__name__)


class SegWriterOperator(Operator):
    """Named input: ``final`` (FinalResult or StepFailure).

    For each image, :func:`operators.lib.case_outputs.write_processed` (or ``write_failed``) writes
    into a hidden staging folder that is renamed to ``<output>/<case_id>/`` when complete
    (:mod:`operators.lib.publish`), so a crash never leaves a partial result; the outcome goes into the
    run ledger. A failure to write (a full disk) fails that image only.

    With ``writer_threads`` > 0 the writing runs on that many background threads while the graph
    computes the next image (DICOM encoding, PNG compression and file I/O overlap the next image's
    forwards); at most ``max_in_flight`` results are held (written or waiting), so memory stays flat
    whatever the number of studies. :meth:`stop` waits for every write before the graph ends, so the
    run summary is complete. ``writer_threads=0`` writes inline.
    """

    INPUT = "final"

    def __init__(self, fragment: Fragment, *args, output_folder: Path, ledger: RunLedger, algorithm: AlgorithmInfo,
                 model_versions: dict[str, Any], writer_threads: int = 0, max_in_flight: int = 2, **kwargs):
        self._output = Path(output_folder)
        self._ledger = ledger
        self._algorithm = algorithm
        self._models = model_versions
        self._pool = background_pool("seg-writer", writer_threads) if writer_threads > 0 else None
        self._max_in_flight = max(1, int(max_in_flight))
        self._in_flight: deque[Future] = deque()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)

    def start(self) -> None:
        """Before the first image: remove staging folders and temporary files of an interrupted run, and
        warm the writer up (:mod:`operators.lib.writer_warmup`) on its own thread, or inline without one."""
        clean_stale_staging(self._output)
        if self._pool is None:
            warm_up(self._algorithm, self._models, self._output)
        else:  # the first write queues behind it; the models do not wait for it
            self._in_flight.append(self._pool.submit(warm_up, self._algorithm, self._models, self._output))

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

    def write(self, final: FinalResult, computed_at: datetime | None = None) -> list[str]:
        """Write and publish one processed image's outputs; return their paths. ``computed_at`` (default:
        now) is when the result reached the writer: result.json records it."""
        computed_at = computed_at or datetime.now(timezone.utc)
        return self._publish(final.case.case_id,
                             lambda folder, target: write_processed(folder, final, self._algorithm, self._models, target, computed_at))

    def write_failure(self, failure: StepFailure) -> list[str]:
        return self._publish(failure.case.case_id, lambda folder, target: write_failed(folder, failure, self._algorithm, self._models, target))

    def compute(self, op_input, op_output, context) -> None:
        item = op_input.receive(self.INPUT)
        received = datetime.now(timezone.utc)  # the image's compute is done: result.json's computed_at
        if self._pool is None:
            self.handle(item, received)
            return
        while len(self._in_flight) >= self._max_in_flight:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(self.handle, item, received))

    def drain(self) -> None:
        """Wait until every result handed to the writer threads is written and recorded."""
        while self._in_flight:
            self._in_flight.popleft().result()

    def stop(self) -> None:
        """After the last image: finish the writes in flight (the summary is written after the graph ends)."""
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def handle(self, item: FinalResult | StepFailure, received: datetime | None = None) -> None:
        """Write one image's outputs (or its failure report) and record the outcome; never raises.
        ``received``: when the graph handed the item over (result.json's ``computed_at``)."""
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
            outputs = self.write(item, received)
        except Exception as exc:  # e.g. a full or read-only output folder: this image fails, the run goes on
            logger.exception("Writing results for %s failed", case.path)
            self._ledger.record(case.path, Outcome.FAILED, f"{case.path}: writing results failed ({type(exc).__name__}: {exc}).", case.case_id)
            return
        logger.info("Wrote %s → %s (positive: %s, max p %.2f)", case.path, self._output / case.case_id, item.gate.positive, item.prob_map.max())
        self._ledger.record(case.path, Outcome.PROCESSED, None, case.case_id, outputs)
