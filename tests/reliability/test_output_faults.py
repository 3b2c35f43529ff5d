"""Output faults: a read-only or full output folder, and a kill in the middle of a run.

In every case: no partial or corrupt file is ever visible in the output folder (results are
written into hidden staging folders and renamed when complete), the reason for each failure is
in summary.json when it can be written and in the log otherwise, and a later run tidies what a
killed run left behind.

Read-only: tests run as root, for whom permissions do not apply, so the app is started through
``setpriv`` without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (still uid 0, but permission bits now
bind); as any other user a chmod is enough. Full disk: a 1.5 MiB tmpfs mounted on the output folder
when the test may mount, else RLIMIT_FSIZE (writes past 600 KiB fail with EFBIG).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from operators.lib.run_report import ExitCode
from tests.support import cases
from tests.support.app_runner import check_result_folder, hidden_entries, io_args, run_app, start_app

pytestmark = pytest.mark.e2e
DEAD_PID = 999_999_999  # above Linux's pid_max (2**22): never a live process


def _visible_results(output: Path) -> list[Path]:
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))


def _small_studies(dicom_dir: Path, folder: Path, names: list[str], size: int = 256) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [cases.study_copy(dicom_dir, 100 + i, folder / name, size=size) for i, name in enumerate(names)]


def _without_dac_override() -> tuple[str, ...]:
    """A command prefix under which file permission bits apply to this user, or skip."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only for the app")
    prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search", "--")
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[-200:]}")
    return prefix


def test_read_only_output_folder_writes_nothing_and_fails_with_the_reason(tmp_path, dicom_dir, model_pack):
    prefix = _without_dac_override()
    inputs = _small_studies(dicom_dir, tmp_path / "in", ["a.dcm", "b.dcm"])
    output = tmp_path / "out"
    output.mkdir()
    output.chmod(0o555)
    try:
        run = run_app(io_args(tmp_path / "in", output, model_pack), output, prefix=prefix, timeout=300)
    finally:
        output.chmod(0o755)
    # The CLI checks the output folder is writable before loading models or reading any input.
    assert run.returncode == ExitCode.CONFIGURATION, run.stderr[-3000:]
    assert list(output.iterdir()) == []
    assert "Permission denied" in run.stderr and str(output) in run.stderr
    assert "cannot be created or written" in run.stderr
    assert not any(str(path) in run.stderr for path in inputs)  # no input was read


@pytest.fixture
def full_disk(tmp_path):
    """(output folder, how it is full, app kwargs): a 1.5 MiB tmpfs when mounting works, else RLIMIT_FSIZE."""
    output = tmp_path / "out"
    output.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1536k,mode=0755", "tmpfs", str(output)], capture_output=True).returncode == 0
    try:
        if mounted:
            yield output, "No space left on device", {}
        else:
            yield output, "File too large", {"max_file_bytes": 600 * 1024}
    finally:
        if mounted:
            subprocess.run(["umount", str(output)], capture_output=True)


def test_full_output_disk_fails_only_the_images_that_do_not_fit(tmp_path, dicom_dir, model_pack, full_disk):
    output, error, limits = full_disk
    folder = tmp_path / "in"
    _small_studies(dicom_dir, folder, ["a_small.dcm", "c_small.dcm"])
    big = folder / "b_big.dcm"  # 1024² CR: ~2.5 MB of results, more than the disk (or the file limit) allows
    shutil.copy(cases.rsna_files(dicom_dir)[0], big)
    run = run_app(io_args(folder, output, model_pack), output, timeout=300, **limits)
    assert run.returncode == ExitCode.OK, run.stderr[-3000:]
    summary = run.summary
    assert summary["counts"] == {"processed": 2, "refused": 0, "skipped": 0, "failed": 1}
    failed = [r for r in summary["files"] if r["outcome"] == "failed"]
    assert failed[0]["path"] == str(big)
    assert failed[0]["reason"].startswith(f"{big}: writing results failed") and error in failed[0]["reason"]
    assert failed[0]["outputs"] == []
    results = _visible_results(output)
    assert len(results) == 2  # the images after the failure were still written
    for result in results:
        check_result_folder(result)
    assert hidden_entries(output) == []  # the failed image's staging folder was removed
    assert sorted(p.name for p in output.iterdir() if p.is_file()) == ["summary.json"]


def test_kill_mid_run_leaves_only_complete_results_and_the_next_run_tidies_up(tmp_path, dicom_dir, model_pack):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, source in enumerate(cases.rsna_files(dicom_dir)[:4]):  # 1024² CRs: writing takes a while
        shutil.copy(source, folder / f"{i}.dcm")
    output = tmp_path / "out"
    output.mkdir()
    # what an older interrupted run left: a staging folder, a summary being written, and a complete
    # result caught between the two renames of a replacement
    stale_staging = output / f".1.2.3.4.{DEAD_PID}.abcd1234.partial"
    stale_staging.mkdir()
    (stale_staging / "seg_probability.dcm").write_bytes(b"DICM half a file")
    (output / f".summary.json.{DEAD_PID}.x1y2z3.tmp").write_text('{"truncated": ')
    live_staging = output / f".5.6.7.{os.getpid()}.efgh5678.partial"  # another live process's: left alone
    live_staging.mkdir()
    stranded = output / f".9.8.7.old-{DEAD_PID}"
    stranded.mkdir()
    (stranded / "result.json").write_text('{"status": "processed"}')

    app = start_app(io_args(folder, output, model_pack), output)
    deadline = time.monotonic() + 240
    killed_while_writing = False
    while app.proc.poll() is None and time.monotonic() < deadline:
        written = [p for p in _visible_results(output) if p.name != "9.8.7"]
        if written and any(p.name.endswith(".partial") and p not in (stale_staging, live_staging) for p in output.iterdir()):
            app.proc.send_signal(signal.SIGKILL)
            killed_while_writing = True
            break
        time.sleep(0.01)
    app.wait(60)
    assert killed_while_writing, f"the run ended (rc {app.returncode}) before it could be killed mid-write:\n{app.stderr[-2000:]}"
    assert app.returncode == -signal.SIGKILL

    assert (output / "9.8.7" / "result.json").is_file()  # the run's start put the stranded result back
    results = [p for p in _visible_results(output) if p.name != "9.8.7"]
    assert 1 <= len(results) < 4
    for result in results:  # whatever is visible is complete
        check_result_folder(result)
    assert not (output / "summary.json").exists()  # a killed run has no summary, rather than a wrong one

    rerun = run_app(io_args(folder, output, model_pack), output, timeout=300)
    assert rerun.returncode == ExitCode.OK, rerun.stderr[-3000:]
    assert rerun.summary["counts"]["processed"] == 4
    assert "left by an interrupted run" in rerun.stderr
    assert hidden_entries(output) == [live_staging.name]  # every stale staging folder and temporary file is gone
    results = [p for p in _visible_results(output) if p.name != "9.8.7"]
    assert len(results) == 4
    for result in results:
        check_result_folder(result)
