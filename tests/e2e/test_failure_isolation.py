"""One image failing in a pipeline step never costs another image its result (in-process app run)."""

from __future__ import annotations

import json
import shutil

import pytest

from app.cli import main
from operators.lib.segmenters import ConvNextFpnSegmenter

pytestmark = pytest.mark.e2e


def test_a_failing_step_fails_one_image_and_the_others_finish(tmp_path, dicom_dir, random_pack, monkeypatch):
    input_folder = tmp_path / "in"
    input_folder.mkdir()
    rsna = sorted((dicom_dir / "rsna").glob("*.dcm"))
    for index, path in enumerate(rsna[:3]):
        shutil.copy(path, input_folder / f"{index}.dcm")
    original = ConvNextFpnSegmenter.predict_square
    calls = {"n": 0}

    def flaky(self, square_image):
        calls["n"] += 1
        if calls["n"] == 2:  # the second image (1.dcm, sorted order)
            raise RuntimeError("simulated model crash")
        return original(self, square_image)

    monkeypatch.setattr(ConvNextFpnSegmenter, "predict_square", flaky)
    output = tmp_path / "out"
    code = main(["-i", str(input_folder), "-o", str(output), "-m", str(random_pack)])
    assert code == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["counts"] == {"processed": 2, "refused": 0, "skipped": 0, "failed": 1}
    failed = next(r for r in summary["files"] if r["outcome"] == "failed")
    assert failed["path"].endswith("1.dcm")
    assert "expert:convnext_fpn_clip_336" in failed["reason"] and "simulated model crash" in failed["reason"]
    result = json.loads((output / failed["case_id"] / "result.json").read_text())
    assert result["status"] == "failed" and result["failed_step"] == "expert:convnext_fpn_clip_336"
    assert sorted(p.name for p in (output / failed["case_id"]).iterdir()) == ["result.json"]
    for record in summary["files"]:
        if record["outcome"] == "processed":
            assert (output / record["case_id"] / "seg_probability.dcm").is_file()
    assert not list(output.glob(".*partial*"))
    assert_forked_children_stop_on_sigterm()


def caught_signals() -> int:
    """This process's caught-signal mask (/proc/self/status SigCgt): C handlers included."""
    line = next(line for line in open("/proc/self/status") if line.startswith("SigCgt:"))
    return int(line.split()[1], 16)


def assert_forked_children_stop_on_sigterm() -> None:
    """After the app ran in this process, a forked worker still dies on SIGTERM (what Pool.terminate sends)."""
    import multiprocessing
    import signal
    import time

    assert not caught_signals() & (1 << (signal.SIGTERM - 1)), "a SIGTERM handler outlived the app's run"
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    child.terminate()
    child.join(timeout=10)
    alive = child.is_alive()
    if alive:
        child.kill()
        child.join()
    assert not alive and child.exitcode == -signal.SIGTERM


def test_the_app_leaves_no_signal_handler_behind(tmp_path, random_pack):
    """Holoscan installs C handlers for SIGINT/SIGTERM/SIGHUP while the graph runs; the CLI gives the
    process its own back (a later fork-based pool in the same process would otherwise hang on terminate)."""
    import signal

    before = caught_signals()
    (tmp_path / "in").mkdir()
    code = main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(random_pack)])
    assert code is not None
    mask = sum(1 << (s - 1) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    assert caught_signals() & mask == before & mask
    assert_forked_children_stop_on_sigterm()


def test_the_summary_waits_for_the_writer_thread(tmp_path, dicom_dir, random_pack, monkeypatch):
    """Results are written on a background thread while the next image computes; the graph's end waits
    for them (SegWriterOperator.stop), so a slow last write is still in summary.json and on disk."""
    import time

    import operators.seg_writer_operator as writer_module

    input_folder = tmp_path / "in"
    input_folder.mkdir()
    for index, path in enumerate(sorted((dicom_dir / "rsna").glob("*.dcm"))[:2]):
        shutil.copy(path, input_folder / f"{index}.dcm")
    original = writer_module.write_processed

    def slow(*args):
        time.sleep(2.0)
        return original(*args)

    monkeypatch.setattr(writer_module, "write_processed", slow)
    output = tmp_path / "out"
    assert main(["-i", str(input_folder), "-o", str(output), "-m", str(random_pack), "--writer-threads", "1"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["writer_threads"] == 1
    assert summary["counts"] == {"processed": 2, "refused": 0, "skipped": 0, "failed": 0}
    for record in summary["files"]:
        assert (output / record["case_id"] / "seg_probability.dcm").is_file()
