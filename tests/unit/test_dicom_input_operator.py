"""The input operator reads the next file while the current image is in the models (issue #11: overlap)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from holoscan.conditions import BooleanCondition
from monai.deploy.core import Fragment

import operators.dicom_input_operator as input_module
from operators.dicom_input_operator import DicomCxrInputOperator
from operators.lib.dicom_input import load_cxr
from operators.lib.run_report import Outcome, RunLedger

DATA = Path(__file__).resolve().parents[1] / "data" / "dicom"


class Output:
    def __init__(self):
        self.emitted = []

    def emit(self, value, name):
        self.emitted.append((name, value))


@pytest.fixture()
def folder(tmp_path) -> Path:
    """1: a chest CR, 2: a non-chest DICOM (refused), 3: a chest CR; read in this order."""
    shutil.copy(DATA / "rsna" / "00436515-870c-4b36-a041-de91049b9ab4.dcm", tmp_path / "1.dcm")
    shutil.copy(DATA / "misc" / "non_chest" / "nhsx_sample_abdomen_OT.dcm", tmp_path / "2.dcm")
    shutil.copy(DATA / "rsna" / "0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm", tmp_path / "3.dcm")
    return tmp_path


@pytest.fixture()
def reads(monkeypatch) -> list[tuple[str, str]]:
    """(file name, thread name) of every read, in the order they finished."""
    seen: list[tuple[str, str]] = []

    def recording_load(path, case_id):
        try:
            return load_cxr(path, case_id)
        finally:
            seen.append((Path(path).name, threading.current_thread().name))

    monkeypatch.setattr(input_module, "load_cxr", recording_load)
    return seen


class Condition:
    """Stands in for the graph's ``more_input`` BooleanCondition (its state is only set inside a running graph)."""

    def __init__(self):
        self.enabled = True

    def disable_tick(self):
        self.enabled = False


@pytest.fixture(autouse=True)
def condition(monkeypatch) -> Condition:
    more_input = Condition()
    monkeypatch.setattr(DicomCxrInputOperator, "conditions", property(lambda self: {"more_input": more_input}))
    return more_input


def _operator(folder: Path, ledger: RunLedger, read_ahead: bool, name: str) -> DicomCxrInputOperator:
    fragment = Fragment()
    return DicomCxrInputOperator(fragment, BooleanCondition(fragment, name="more_input"), input_folder=folder, ledger=ledger,
                                 read_ahead=read_ahead, name=name)


def _until(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_the_next_file_is_read_on_the_reader_thread_while_the_current_image_is_out(folder, reads, condition):
    ledger = RunLedger()
    operator = _operator(folder, ledger, True, "input_ahead")
    try:
        first = Output()
        operator.compute(None, first, None)
        assert [(n, v.path.name) for n, v in first.emitted] == [("cxr", "1.dcm")]
        # before the next compute: the following file is read by the reader thread
        assert _until(lambda: any(name == "2.dcm" for name, _ in reads)), reads
        assert all(thread.startswith("dicom-read") for _, thread in reads), reads
        assert condition.enabled

        second = Output()
        operator.compute(None, second, None)
        # the refused file is recorded here, in file order, and costs only itself
        assert [(r.path, r.outcome) for r in ledger.records] == [(str(folder / "2.dcm"), Outcome.REFUSED)]
        assert [(n, v.path.name) for n, v in second.emitted] == [("cxr", "3.dcm")]
        assert not condition.enabled, "the run does not end after the last file"
        expected = load_cxr(folder / "3.dcm", "x")
        image = second.emitted[0][1]
        assert np.array_equal(image.pixels, expected.pixels) and image.decode_seconds > 0
        assert image.case_id == str(expected.dataset.SOPInstanceUID)
    finally:
        operator.stop()
    assert not any(t.name.startswith("dicom-read") and t.is_alive() for t in threading.enumerate())


def test_without_read_ahead_each_file_is_read_in_compute_only(folder, reads, condition):
    ledger = RunLedger()
    operator = _operator(folder, ledger, False, "input_inline")
    main = threading.current_thread().name
    first = Output()
    operator.compute(None, first, None)
    time.sleep(0.2)
    assert reads == [("1.dcm", main)]
    second = Output()
    operator.compute(None, second, None)
    assert reads == [("1.dcm", main), ("2.dcm", main), ("3.dcm", main)]
    assert [v.path.name for _, v in second.emitted] == ["3.dcm"]
    assert [r.outcome for r in ledger.records] == [Outcome.REFUSED]
    assert not condition.enabled
    operator.stop()


def test_a_run_whose_last_files_are_all_refused_ends(folder, reads, condition):
    (folder / "3.dcm").unlink()
    ledger = RunLedger()
    operator = _operator(folder, ledger, True, "input_tail")
    try:
        operator.compute(None, Output(), None)
        assert condition.enabled
        out = Output()
        operator.compute(None, out, None)
        assert out.emitted == [] and [r.outcome for r in ledger.records] == [Outcome.REFUSED]
        assert not condition.enabled
    finally:
        operator.stop()
