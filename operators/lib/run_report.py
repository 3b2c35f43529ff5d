"""The run ledger: every input file's outcome, and the run's ``summary.json``.

The input operator records refused and skipped files; the writer records processed and failed
images. At the end the app writes ``summary.json`` (atomically) and derives the exit code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from operators.lib.atomic_file import write_json_atomically


class Outcome(str, Enum):
    """What happened to one input file."""

    PROCESSED = "processed"  # results written
    REFUSED = "refused"  # a DICOM file that is not a frontal chest radiograph we can process
    SKIPPED = "skipped"  # not DICOM / unreadable
    FAILED = "failed"  # accepted, but a pipeline step or the writer failed


class ExitCode(int, Enum):
    """Exit codes of ``python -m app`` (documented in the README)."""

    OK = 0  # at least one image processed; refusals/failures are listed in summary.json
    ERROR = 1  # the app itself failed (unexpected exception)
    CONFIGURATION = 2  # bad arguments, or a missing/corrupt model folder: nothing was read
    NOTHING_PROCESSED = 3  # no image could be processed (none qualified, or all failed)


@dataclass
class FileRecord:
    """One input file's line in summary.json."""

    path: str
    outcome: Outcome
    reason: str | None = None
    case_id: str | None = None
    outputs: list[str] = field(default_factory=list)


class RunLedger:
    """Collects one :class:`FileRecord` per input file; safe to share between operators."""

    def __init__(self) -> None:
        self._records: list[FileRecord] = []
        self._lock = threading.Lock()
        self.started = time.time()
        self.info: dict[str, Any] = {}

    def record(self, path: Path | str, outcome: Outcome, reason: str | None = None, case_id: str | None = None,
               outputs: list[str] | None = None) -> None:
        with self._lock:
            self._records.append(FileRecord(str(path), outcome, reason, case_id, list(outputs or [])))

    @property
    def records(self) -> list[FileRecord]:
        with self._lock:
            return list(self._records)

    def counts(self) -> dict[str, int]:
        out = {outcome.value: 0 for outcome in Outcome}
        for record in self.records:
            out[record.outcome.value] += 1
        return out

    def exit_code(self) -> ExitCode:
        counts = self.counts()
        return ExitCode.OK if counts[Outcome.PROCESSED.value] > 0 else ExitCode.NOTHING_PROCESSED

    def summary(self) -> dict[str, Any]:
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 3),
            "counts": self.counts(),
            "exit_code": int(self.exit_code()),
            **self.info,
            "files": [{**asdict(r), "outcome": r.outcome.value} for r in self.records],
        }

    def write_summary(self, path: Path) -> None:
        write_json_atomically(self.summary(), path)
