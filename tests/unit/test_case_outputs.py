"""The writer in process: one case's outputs written by the operator the graph calls, checked against each
other and against the case; publishing, tidying and naming as pure functions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from monai.deploy.core import Fragment
from pydicom.sr.codedict import codes

from operators.lib.case_naming import case_folder_name, is_valid_uid
from operators.lib.uids import result_uids
from operators.lib.case_outputs import PROCESSED_FILES, caption
from operators.lib.dicom_input import load_cxr
from operators.lib.publish import clean_stale_staging, publish_folder, staging_folder
from operators.lib.results import ClassifierResult, ExpertResult, FinalResult, GateDecision, LungResult, RefinementResult, StepFailure
from operators.lib.run_report import Outcome, RunLedger
from operators.lib.seg_output import AlgorithmInfo
from operators.seg_writer_operator import SegWriterOperator

ALGORITHM = AlgorithmInfo("cxr-lung-opacity", "9.9.9", "zones")
MODELS = {"m": {"version": "1"}}


@pytest.fixture(scope="module")
def fragment() -> Fragment:
    return Fragment()


@pytest.fixture(scope="module")
def cxr(dicom_dir):
    return load_cxr(sorted((dicom_dir / "rsna").glob("*.dcm"))[2], "1.2.3.4.5")


def final_result(cxr, positive: bool) -> FinalResult:
    rows, cols = cxr.shape
    prob = np.full((rows, cols), 0.05, np.float32)
    lung = np.zeros((rows, cols), bool)
    lung[200:800, 150:450] = lung[200:800, 574:874] = True
    prob[lung] = 0.3
    if positive:
        prob[300:500, 200:400] = 0.62
        prob[350:450, 250:350] = 0.93
        prob[600:700, 600:700] = 0.81
        prob[20:30, 20:30] = 0.7  # a tiny region outside the lungs: too small for the SR
    classifier = ClassifierResult(cxr, "clf", 0.8 if positive else 0.2, 0.01)
    experts = tuple(ExpertResult(cxr, f"e{k}", prob, 0.7 if positive else 0.1, 0.01) for k in range(3))
    mean = float(np.mean([classifier.score] + [e.score for e in experts]))
    gate = GateDecision(cxr, classifier, experts, mean, 0.41, positive)
    refinement = RefinementResult(gate, "refine", prob if positive else None, ((300, 200, 500, 400),) if positive else (), 0.02)
    return FinalResult(refinement, LungResult(cxr, "lung", lung, 0.01), prob, prob >= 0.5, "zones", {}, 0.01)


@pytest.fixture(scope="module", params=[True, False], ids=["positive", "negative"])
def written(request, fragment, cxr, tmp_path_factory):
    output = tmp_path_factory.mktemp("writer") / "out"
    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=output, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS,
                               name=f"writer_{request.param}")
    final = final_result(cxr, request.param)
    outputs = writer.write(final)
    return final, output / cxr.case_id, outputs


def test_every_file_is_published_and_listed(written):
    final, folder, outputs = written
    assert sorted(p.name for p in folder.iterdir()) == sorted(PROCESSED_FILES)
    assert [Path(p) for p in outputs] == [folder / name for name in PROCESSED_FILES]
    report = json.loads((folder / "result.json").read_text())
    assert report["outputs"] == outputs and report["status"] == "processed"
    assert report["gate"]["decision"] == ("positive" if final.gate.positive else "negative")
    assert report["gate"]["threshold"] == 0.41 and report["gate"]["mean_score"] == pytest.approx(final.gate.mean_score, abs=1e-6)
    assert report["refined_boxes"] == [list(b) for b in final.refinement.boxes]
    assert report["final"]["opacity_fraction"] == pytest.approx(final.opacity_mask.mean(), abs=1e-6)
    assert report["final"]["lung_fraction"] == pytest.approx(final.lung.mask.mean(), abs=1e-6)
    assert report["models"] == MODELS and report["preset"] == "zones"


def test_segs_hold_the_final_map_the_mask_and_the_lungs(written):
    final, folder, _ = written
    uid = final.case.dataset.SOPInstanceUID
    probability = hd.seg.segread(folder / "seg_probability.dcm")
    stored = probability.get_pixels_by_source_instance([uid], segment_numbers=[1], rescale_fractional=False)[0][..., 0]
    np.testing.assert_array_equal(stored, np.round(final.prob_map * 255).astype(stored.dtype))
    binary = hd.seg.segread(folder / "seg_binary.dcm")
    both = binary.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])[0]
    assert [binary.get_segment_description(n).segment_label for n in (1, 2)] == ["Opacity", "Lung"]
    np.testing.assert_array_equal(both[..., 0].astype(bool), final.opacity_mask)
    np.testing.assert_array_equal(both[..., 1].astype(bool), final.lung.mask)
    bands = hd.seg.segread(folder / "seg_bands.dcm").get_pixels_by_source_instance([uid], segment_numbers=[1, 2, 3])[0].astype(bool)
    np.testing.assert_array_equal(bands[..., 2], final.prob_map >= 0.9)
    np.testing.assert_array_equal(bands[..., 0], (final.prob_map >= 0.5) & (final.prob_map < 0.75))


def test_sr_and_sc_say_what_the_gate_said(written):
    final, folder, _ = written
    gate = final.gate
    sr = hd.sr.srread(folder / "sr_opacity.dcm")
    groups = sr.content.get_image_measurement_groups()
    score = groups[0]
    assert score.get_measurements(name=codes.DCM.Probability)[0].value == pytest.approx(gate.mean_score, abs=1e-6)
    decision = score.get_qualitative_evaluations(name=codes.DCM.Opacity)[0].value
    assert decision.value == (codes.SCT.Present if gate.positive else codes.SCT.Absent).value
    regions = groups[1:]
    assert len(regions) == (2 if gate.positive else 0)  # the 10×10 region is below the minimum area
    assert sr.SeriesInstanceUID != pydicom.dcmread(folder / "seg_binary.dcm", stop_before_pixels=True).SeriesInstanceUID
    sc = pydicom.dcmread(folder / "sc_heatmap.dcm", stop_before_pixels=True)
    assert sc.DerivationDescription.endswith(caption(gate.mean_score, gate.positive, gate.threshold, "zones"))


def test_result_uids_come_from_the_case(written, fragment, cxr, tmp_path):
    final, folder, _ = written
    again = SegWriterOperator(fragment, output_folder=tmp_path, ledger=RunLedger(), algorithm=ALGORITHM, model_versions=MODELS,
                              name="writer_again")
    again.write(final)
    for name in PROCESSED_FILES:
        if name.endswith(".dcm"):
            first = pydicom.dcmread(folder / name, stop_before_pixels=True)
            second = pydicom.dcmread(tmp_path / cxr.case_id / name, stop_before_pixels=True)
            assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (second.SeriesInstanceUID, second.SOPInstanceUID)


def test_result_uids_are_derived_from_the_case_id_not_the_source_uid(written):
    """The case id (here not the source's SOP Instance UID) names every result: a second file with the
    same SOP Instance UID gets its own results instead of overwriting the first one's."""
    final, folder, _ = written
    assert final.case.case_id != final.case.dataset.SOPInstanceUID
    kinds = {"seg_probability.dcm": "seg-probability", "seg_binary.dcm": "seg-binary", "seg_bands.dcm": "seg-bands",
             "sr_opacity.dcm": "sr", "sc_heatmap.dcm": "sc-heatmap"}
    for name, kind in kinds.items():
        ds = pydicom.dcmread(folder / name, stop_before_pixels=True)
        assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == result_uids(final.case.case_id, ALGORITHM.version, ALGORITHM.preset, kind), name


def test_caption_by_hand():
    assert caption(0.624, True, 0.5, "zones") == "opacity score 0.62 (positive, threshold 0.50), preset zones"
    assert caption(0.1, False, 0.37, "weighted") == "opacity score 0.10 (negative, threshold 0.37), preset weighted"


class _Port:
    """The writer's op_input: one named input, ``final``."""

    def __init__(self, item):
        self.item = item

    def receive(self, name):
        assert name == "final", name
        return self.item


def test_writer_records_processed_and_failed_cases_in_the_ledger(fragment, cxr, tmp_path):
    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS, name="w3")
    writer.compute(_Port(final_result(cxr, True)), None, None)
    other = load_cxr(cxr.path, "1.2.3.4.6")
    writer.compute(_Port(StepFailure(other, "expert:e1", "boom")), None, None)
    (processed,) = [r for r in ledger.records if r.outcome is Outcome.PROCESSED]
    (failed,) = [r for r in ledger.records if r.outcome is Outcome.FAILED]
    assert processed.case_id == cxr.case_id and len(processed.outputs) == len(PROCESSED_FILES)
    assert processed.path == str(cxr.path) and processed.reason is None
    assert failed.case_id == "1.2.3.4.6" and failed.path == str(other.path)
    assert failed.reason == f"{other.path}: step expert:e1 failed: boom"
    assert failed.outputs == [str(tmp_path / "1.2.3.4.6" / "result.json")]
    report = json.loads((tmp_path / "1.2.3.4.6" / "result.json").read_text())
    assert report["status"] == "failed" and report["failed_step"] == "expert:e1"
    assert report["preset"] == "zones" and report["models"] == MODELS
    assert sorted(p.name for p in (tmp_path / "1.2.3.4.6").iterdir()) == ["result.json"]


def test_computed_at_is_when_the_writer_received_the_result_not_when_it_wrote(fragment, cxr, tmp_path, monkeypatch):
    """result.json's computed_at is stamped in compute() (the image left the models), not on the writer
    thread: the benchmark's steady-state time per study is measured from it."""
    import threading
    from datetime import datetime

    import operators.lib.case_outputs as case_outputs

    gate = threading.Event()
    original = case_outputs.write_processed

    def delayed(folder, final, *args):
        gate.wait(timeout=30)
        return original(folder, final, *args)

    monkeypatch.setattr("operators.seg_writer_operator.write_processed", delayed)
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=RunLedger(), algorithm=ALGORITHM, model_versions=MODELS,
                               writer_threads=1, max_in_flight=2, name="w_stamp")
    first, second = load_cxr(cxr.path, "1.2.3.4.20"), load_cxr(cxr.path, "1.2.3.4.21")
    writer.compute(_Port(final_result(first, True)), None, None)  # its write waits for the gate
    before = time.time()
    writer.compute(_Port(final_result(second, True)), None, None)  # queued behind it on the one writer thread
    after = time.time()
    time.sleep(0.3)
    gate.set()
    writer.stop()
    result = tmp_path / second.case_id / "result.json"
    stamp = datetime.fromisoformat(json.loads(result.read_text())["computed_at"])
    assert stamp.utcoffset() is not None  # an aware time (UTC), comparable across machines
    assert before <= stamp.timestamp() <= after < result.stat().st_mtime - 0.25


def test_writer_threads_hold_at_most_max_in_flight_and_stop_finishes_every_write(fragment, cxr, tmp_path, monkeypatch):
    """With a writer thread, compute returns before the files exist, never holds more than
    ``max_in_flight`` results, one failing write costs only its case, and stop() leaves every case
    written and recorded (the summary is written after it)."""
    import threading

    import operators.lib.case_outputs as case_outputs

    gate = threading.Event()
    original = case_outputs.write_processed
    held = []

    def slow(folder, final, *args):
        gate.wait(timeout=30)
        if final.case.case_id.endswith(".2"):
            raise OSError(28, "No space left on device")
        return original(folder, final, *args)

    monkeypatch.setattr("operators.seg_writer_operator.write_processed", slow)
    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS,
                               writer_threads=1, max_in_flight=2, name="w_pool")
    cases = [load_cxr(cxr.path, f"1.2.3.4.{k}") for k in range(4)]
    for k in range(2):
        writer.compute(_Port(final_result(cases[k], True)), None, None)
        held.append(len(writer._in_flight))
    assert held == [1, 2] and ledger.records == [] and not (tmp_path / cases[0].case_id).exists()  # nothing written yet
    threading.Timer(0.5, gate.set).start()
    for k in range(2, 4):
        writer.compute(_Port(final_result(cases[k], True)), None, None)  # waits for the oldest write: memory stays bounded
        assert len(writer._in_flight) <= 2
    writer.stop()
    assert not writer._in_flight
    by_case = {r.case_id: r for r in ledger.records}
    assert sorted(by_case) == [c.case_id for c in cases]
    assert by_case["1.2.3.4.2"].outcome is Outcome.FAILED and "No space left" in by_case["1.2.3.4.2"].reason
    for k in (0, 1, 3):
        assert by_case[f"1.2.3.4.{k}"].outcome is Outcome.PROCESSED
        assert (tmp_path / f"1.2.3.4.{k}" / "seg_probability.dcm").is_file()
    assert not (tmp_path / "1.2.3.4.2").exists()


def test_a_write_failure_fails_the_case_and_leaves_nothing(fragment, cxr, tmp_path, monkeypatch):
    import operators.lib.case_outputs as case_outputs

    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS, name="w4")
    monkeypatch.setattr(case_outputs, "write_png_atomically", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    writer.compute(_Port(final_result(cxr, True)), None, None)
    (record,) = ledger.records
    assert record.outcome is Outcome.FAILED and record.path == str(cxr.path) and record.case_id == cxr.case_id
    assert record.reason == f"{cxr.path}: writing results failed (OSError: [Errno 28] No space left on device)."
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone, nothing published


def test_a_failure_whose_report_cannot_be_written_is_still_counted(fragment, cxr, tmp_path, monkeypatch):
    import operators.lib.case_outputs as case_outputs

    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS, name="w5")
    monkeypatch.setattr(case_outputs, "write_json_atomically", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    writer.compute(_Port(StepFailure(cxr, "lung:x", "bad")), None, None)
    (record,) = ledger.records
    assert record.outcome is Outcome.FAILED and record.outputs == [] and record.path == str(cxr.path)
    assert record.reason == (f"{cxr.path}: step lung:x failed: bad (and its result.json could not be written: "
                             "OSError: [Errno 28] No space left on device)")


def test_publish_replaces_a_result_whole(tmp_path):
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "old.txt").write_text("old")
    staging = staging_folder(tmp_path, "case")
    assert staging.name.startswith(".case.") and staging.name.endswith(".partial") and (staging.stat().st_mode & 0o777) == 0o755
    (staging / "new.txt").write_text("new")
    publish_folder(staging, tmp_path / "case")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == ["new.txt"]


def test_clean_up_touches_only_what_dead_runs_left(tmp_path):
    dead = 2**22 + 12345  # above pid_max: no such process
    (tmp_path / f".a.{dead}.x1.partial").mkdir()
    (tmp_path / f".b.{os.getpid() + 0}.x2.partial").mkdir()  # our own pid: an earlier life (container restart)
    (tmp_path / f".summary.json.{dead}.x3.tmp").write_text("")
    (tmp_path / f".c.old-{dead}").mkdir()  # a complete result caught between the two renames, c missing
    (tmp_path / f".d.old-{dead}").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "visible").mkdir()
    (tmp_path / ".not-ours").mkdir()
    done = clean_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".not-ours", "c", "d", "visible"]
    assert len(done) == 5 and any("restored c" in line for line in done)


@pytest.mark.parametrize("value, valid", [("1.2.840.10008.5.1.4.1.1.1", True), ("0.1", True), (".", False), ("..", False),
                                          ("1.02", False), ("1..2", False), ("1.2.", False), ("summary.json", False),
                                          ("1." + "2" * 63, False), ("1." + "2" * 62, True), ("", False), ("7", True)])
def test_valid_uids(value, valid):
    assert is_valid_uid(value) is valid


def test_case_folder_names_are_safe_and_unique(tmp_path):
    taken: dict[str, Path] = {}
    assert case_folder_name("1.2.3", tmp_path / "a.dcm", taken) == ("1.2.3", None)
    name, warning = case_folder_name("1.2.3", tmp_path / "b.dcm", taken)
    assert name == "1.2.3_2" and "shared with" in warning and "a.dcm" in warning
    name, warning = case_folder_name(".x.partial", tmp_path / "c.dcm", taken)
    assert name.startswith("case-") and len(name) == 17 and "not a valid UID" in warning
    assert case_folder_name(".x.partial", tmp_path / "c.dcm", taken)[0] == name + "_2"
    assert set(taken) == {"1.2.3", "1.2.3_2", name, name + "_2"}


def test_clean_up_leaves_what_a_live_run_is_writing_and_staging_is_hidden_and_readable(tmp_path):
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".a.{other.pid}.x1.partial").mkdir()  # another live run's staging folder
        (tmp_path / f".b.old-{other.pid}").mkdir()
        assert clean_stale_staging(tmp_path) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.{other.pid}.x1.partial", f".b.old-{other.pid}"]
        with pytest.raises(subprocess.TimeoutExpired):  # asking whether it lives sends it no signal
            other.wait(timeout=0.5)
    finally:
        other.kill()
        other.wait()
    staging = staging_folder(tmp_path / "out", "1.2.3")
    assert staging.parent == tmp_path / "out" and staging.name.startswith(f".1.2.3.{os.getpid()}.") and staging.name.endswith(".partial")
    assert staging.stat().st_mode & 0o777 == 0o755


def _preview_title(final) -> str:
    return f"{final.gate.mean_score:.2f} {'positive' if final.gate.positive else 'negative'} · zones"


def test_preview_is_the_heat_map_with_the_gates_title(written):
    """A 1024-px source: preview.png is the heat map rendered once, titled with score, decision and preset."""
    from PIL import Image

    from operators.lib.preview import render_preview

    final, folder, _ = written
    expected = render_preview(final.case.pixels, final.prob_map, final.opacity_mask, max_side_px=1024, title=_preview_title(final))
    assert _preview_title(final).split()[1] == ("positive" if final.gate.positive else "negative")
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "preview.png").convert("RGB")), np.asarray(expected))


def test_a_source_larger_than_the_preview_gets_a_full_size_sc_and_a_titled_1024_px_preview(dicom_dir, fragment, tmp_path):
    """NEMA RG1 (1955 × 1841): the SC keeps the source's size (≤ 2048 px), the preview is rendered again at
    1024 px with its title (the branch a 1024-px source never takes)."""
    from PIL import Image

    from operators.lib.preview import render_preview

    big = load_cxr(dicom_dir / "misc" / "nema_wg04_RG1_UNCR.dcm", "1.2.3.4.7")
    assert max(big.shape) > 1024
    final = final_result(big, True)
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=RunLedger(), algorithm=ALGORITHM, model_versions=MODELS,
                               name="writer_big")
    started = time.perf_counter()
    writer.write(final)
    elapsed = time.perf_counter() - started
    folder = tmp_path / big.case_id
    assert 0 < json.loads((folder / "result.json").read_text())["timings_s"]["write"] <= elapsed
    sc = pydicom.dcmread(folder / "sc_heatmap.dcm", stop_before_pixels=True)
    assert sc.Columns == big.shape[1] and sc.Rows >= big.shape[0]  # the heat map at full size, the caption strip below it
    expected = render_preview(big.pixels, final.prob_map, final.opacity_mask, max_side_px=1024, title=_preview_title(final))
    preview = np.asarray(Image.open(folder / "preview.png").convert("RGB"))
    assert max(preview.shape[:2]) == 1024
    np.testing.assert_array_equal(preview, np.asarray(expected))


def test_sr_score_is_drawn_on_the_lung_box(written):
    final, folder, _ = written
    sr = hd.sr.srread(folder / "sr_opacity.dcm")
    (measurement,) = sr.content.get_image_measurement_groups()[0].get_measurements(name=codes.DCM.Probability)
    (rectangle,) = measurement.referenced_coordinates
    # the fixture's lungs: rows 200–800, columns 150–874 (bottom/right exclusive), as (column, row) corners
    np.testing.assert_array_equal(rectangle.value, [[150, 200], [874, 200], [874, 800], [150, 800], [150, 200]])


def _watch_writes(monkeypatch, gate):
    """Replace the writer's write_processed by one that waits for ``gate``, then writes; record the thread,
    the staging folder and how many writes ran at once."""
    import threading

    import operators.lib.case_outputs as case_outputs

    seen = {"threads": [], "folders": [], "running": 0, "most": 0}
    lock = threading.Lock()

    def watched(folder, final, *args):
        with lock:
            seen["threads"].append(threading.current_thread().name)
            seen["folders"].append(Path(folder).name)
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        try:
            gate.wait(timeout=30)
            return case_outputs.write_processed(folder, final, *args)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr("operators.seg_writer_operator.write_processed", watched)
    return seen


def test_writer_pool_holds_two_results_by_default_on_its_own_named_threads(fragment, cxr, tmp_path, monkeypatch):
    """The app's bound: two results in flight unless told otherwise; ``writer_threads`` threads (one here:
    never two writes at once), named ``seg-writer_…``; each case staged under its own name; stop() ends
    the threads. max_in_flight=1 holds one result."""
    import threading

    gate = threading.Event()
    seen = _watch_writes(monkeypatch, gate)
    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS,
                               writer_threads=1, name="w_default")
    cases = [load_cxr(cxr.path, f"1.2.3.5.{k}") for k in range(3)]
    held = []
    threading.Timer(0.5, gate.set).start()
    for k in range(3):
        writer.compute(_Port(final_result(cases[k], True)), None, None)
        held.append(len(writer._in_flight))
    writer.stop()
    assert held == [1, 2, 2] and writer.name == "w_default"
    assert seen["most"] == 1 and len(seen["threads"]) == 3 and all(name.startswith("seg-writer_") for name in seen["threads"])
    assert [name.split(f".{os.getpid()}.")[0] for name in seen["folders"]] == [f".{c.case_id}" for c in cases]
    assert all(name.endswith(".partial") for name in seen["folders"])
    assert not any(t.name.startswith("seg-writer") for t in threading.enumerate())
    assert [r.outcome for r in ledger.records] == [Outcome.PROCESSED] * 3

    gate.clear()
    one = SegWriterOperator(fragment, output_folder=tmp_path / "one", ledger=RunLedger(), algorithm=ALGORITHM, model_versions=MODELS,
                            writer_threads=1, max_in_flight=1, name="w_one")
    threading.Timer(0.5, gate.set).start()
    held = []
    for k in range(2):
        one.compute(_Port(final_result(cases[k], True)), None, None)
        held.append(len(one._in_flight))
    one.stop()
    assert held == [1, 1]
    inline = SegWriterOperator(fragment, output_folder=tmp_path / "inline", ledger=RunLedger(), algorithm=ALGORITHM,
                               model_versions=MODELS, name="w_inline")
    inline.stop()  # nothing to wait for, no pool to shut down


def test_writer_start_tidies_the_output_folder(fragment, tmp_path, monkeypatch):
    dead = 2**22 + 12345  # above pid_max: no such process
    output = tmp_path / "out"
    (output / f".a.{dead}.x1.partial").mkdir(parents=True)
    (output / "visible").mkdir()
    monkeypatch.chdir(tmp_path)
    writer = SegWriterOperator(fragment, output_folder=output, ledger=RunLedger(), algorithm=ALGORITHM, model_versions=MODELS,
                               name="w_start")
    writer.start()
    assert sorted(p.name for p in output.iterdir()) == ["visible"]


def test_a_write_that_loses_its_staging_folder_fails_with_its_own_error(fragment, cxr, tmp_path, monkeypatch):
    """Removing what is left of the staging folder never hides why the write failed."""
    import shutil

    def vanishing(folder, final, *args):
        shutil.rmtree(folder)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("operators.seg_writer_operator.write_processed", vanishing)
    ledger = RunLedger()
    writer = SegWriterOperator(fragment, output_folder=tmp_path, ledger=ledger, algorithm=ALGORITHM, model_versions=MODELS, name="w6")
    writer.compute(_Port(final_result(cxr, True)), None, None)
    (record,) = ledger.records
    assert record.outcome is Outcome.FAILED
    assert record.reason == f"{cxr.path}: writing results failed (OSError: [Errno 5] Input/output error)."
    assert list(tmp_path.iterdir()) == []


def test_publish_over_a_symlinked_result_leaves_its_target_alone(tmp_path):
    """A result folder that is a symlink (a user's) is replaced by the new result; what it pointed to is not
    deleted, and publishing does not fail on it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case").symlink_to(elsewhere, target_is_directory=True)
    staging = staging_folder(out, "case")
    (staging / "new.txt").write_text("new")
    publish_folder(staging, out / "case")
    assert not (out / "case").is_symlink() and sorted(p.name for p in (out / "case").iterdir()) == ["new.txt"]
    assert (elsewhere / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == ["case"], "the replaced link was left behind"


def test_staging_folder_creates_missing_parents(tmp_path):
    staging = staging_folder(tmp_path / "a" / "b" / "out", "1.2.3")
    assert staging.parent == tmp_path / "a" / "b" / "out" and staging.is_dir()


def test_clean_up_removes_a_stale_symlink_not_what_it_points_to(tmp_path):
    dead = 2**22 + 12345
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".a.{dead}.x1.partial").symlink_to(target, target_is_directory=True)
    assert clean_stale_staging(out) == [f"removed .a.{dead}.x1.partial"]
    assert list(out.iterdir()) == [] and (target / "keep.txt").read_text() == "keep"


def test_clean_up_leaves_a_run_of_another_user_alone(tmp_path, monkeypatch):
    """A pid we may not signal (PermissionError: another user's process) is alive."""
    def not_ours(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_ours)
    (tmp_path / ".a.4242.x1.partial").mkdir()
    assert clean_stale_staging(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == [".a.4242.x1.partial"]


def test_warnings_quote_at_most_80_characters_of_a_bad_uid(tmp_path):
    taken: dict[str, Path] = {}
    bad = "x" * 100
    name, warning = case_folder_name(bad, tmp_path / "a.dcm", taken)
    assert repr("x" * 80) in warning and "x" * 81 not in warning
    again, warning = case_folder_name(bad, tmp_path / "a.dcm", taken)  # the same file twice: a second folder
    assert again == name + "_2" and "x" * 80 in warning and "x" * 81 not in warning
