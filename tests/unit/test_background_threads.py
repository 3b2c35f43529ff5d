"""Background threads (writer, read-ahead) run below the models' priority, and only they do."""

from __future__ import annotations

import os
import threading

import pytest

from operators.lib.background import NICE_INCREMENT, background_pool

pytestmark = pytest.mark.skipif(not hasattr(os, "getpriority") or not hasattr(threading, "get_native_id"),
                                reason="needs per-thread nice values (Linux)")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_background_thread_is_nicer_and_the_calling_thread_is_unchanged():
    before = _nice()
    pool = background_pool("test-bg", 1)
    try:
        inside = pool.submit(_nice).result(timeout=30)
    finally:
        pool.shutdown(wait=True)
    assert inside == min(19, before + NICE_INCREMENT)
    assert _nice() == before, "the process's (the models') priority changed"


def test_the_writer_and_the_read_ahead_use_background_threads(tmp_path):
    from monai.deploy.core import Fragment
    from holoscan.conditions import BooleanCondition

    from operators.dicom_input_operator import DicomCxrInputOperator
    from operators.lib.run_report import RunLedger
    from operators.lib.seg_output import AlgorithmInfo
    from operators.seg_writer_operator import SegWriterOperator

    fragment = Fragment()
    reader = DicomCxrInputOperator(fragment, BooleanCondition(fragment, name="more_input"), input_folder=tmp_path, ledger=RunLedger(),
                                   name="bg_input")
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=RunLedger(), algorithm=AlgorithmInfo("a", "1", "zones"),
                               model_versions={}, writer_threads=1, name="bg_writer")
    before = _nice()
    try:
        for pool in (reader._reader, writer._pool):
            assert pool.submit(_nice).result(timeout=30) == min(19, before + NICE_INCREMENT)
    finally:
        reader.stop()
        writer.stop()
