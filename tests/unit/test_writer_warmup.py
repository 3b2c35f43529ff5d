"""The writer's warm-up: a synthetic study written through the real write path, then thrown away, on the
writer's own thread before the first study."""

from __future__ import annotations

import threading
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from monai.deploy.core import Fragment

from operators.lib import writer_warmup
from operators.lib.case_outputs import PROCESSED_FILES, write_processed
from operators.lib.run_report import RunLedger
from operators.lib.seg_output import AlgorithmInfo
from operators.seg_writer_operator import SegWriterOperator

ALGORITHM = AlgorithmInfo("cxr-lung-opacity", "9.9.9", "zones")


def test_the_synthetic_study_writes_every_output_through_the_real_writer(tmp_path):
    """If highdicom refused the synthetic header the warm-up would warm nothing: every object is built and readable."""
    outputs = write_processed(tmp_path, writer_warmup.synthetic_result(), ALGORITHM, {}, tmp_path)
    assert [Path(p).name for p in outputs] == list(PROCESSED_FILES)
    seg = hd.seg.segread(tmp_path / "seg_binary.dcm")
    assert seg.number_of_segments == 2 and seg.get_segment_description(1).segment_label == "Opacity"
    sr = pydicom.dcmread(tmp_path / "sr_opacity.dcm")
    assert sr.PatientID == "WARMUP" and sr.StudyInstanceUID == writer_warmup.synthetic_source().StudyInstanceUID


def test_warm_up_writes_in_the_output_folder_and_leaves_nothing_behind(tmp_path, monkeypatch):
    seen = []
    real = writer_warmup.staging_folder
    monkeypatch.setattr(writer_warmup, "staging_folder", lambda output, case: seen.append(real(output, case)) or seen[-1])
    seconds = writer_warmup.warm_up(ALGORITHM, {}, tmp_path / "out")
    assert seconds is not None and seconds > 0
    (folder,) = seen
    assert folder.parent == tmp_path / "out" and folder.name.startswith(".writer-warm-up.")  # hidden, a staging name
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failing_warm_up_is_logged_and_never_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("operators.lib.case_outputs.write_png_atomically", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
    assert writer_warmup.warm_up(ALGORITHM, {}, tmp_path) is None
    assert "Writer warm-up failed" in caplog.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", [0, 1])
def test_the_writer_warms_up_at_start_on_its_own_thread(threads, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("operators.seg_writer_operator.warm_up",
                        lambda algorithm, models, output: calls.append((threading.current_thread().name, algorithm, models, output)))
    writer = SegWriterOperator(Fragment(), output_folder=tmp_path, ledger=RunLedger(), algorithm=ALGORITHM, model_versions={"m": 1},
                               writer_threads=threads, name=f"warm_{threads}")
    writer.start()
    writer.stop()
    assert len(calls) == 1 and calls[0][1:] == (ALGORITHM, {"m": 1}, tmp_path)
    on_caller = calls[0][0] == threading.current_thread().name
    assert on_caller == (threads == 0), calls[0][0]
    assert list(tmp_path.iterdir()) == []  # nothing written into the output folder
