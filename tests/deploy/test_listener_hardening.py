"""The listener against peers that stall, fill or confuse it, and against crashes (loopback only, bounded).

Each test is a row of the hardening issue's table, done again: it failed on the listener before the
change and passes after.
"""

from __future__ import annotations

import errno
import json
import socket
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE

from deploy import listener as listener_module
from deploy.listener import Destination, JobState, Listener, ListenerConfig, main
from tests.support.orthanc import free_port

ROUTER_AE, LISTENER_AE = "ROUTER", "CXR_TEST"


@pytest.fixture(scope="module")
def nih(dicom_dir) -> Path:
    return next(dicom_dir.glob("misc/nih_*.dcm"))


def config(tmp_path: Path, **overrides) -> ListenerConfig:
    values = dict(models=tmp_path / "models", spool=tmp_path / "spool", allowed_calling_aets=(ROUTER_AE,),
                  destination=Destination("PACS", "127.0.0.1", free_port()), ae_title=LISTENER_AE, port=free_port(),
                  idle_seconds=0.2, retry_seconds=0.05, max_attempts=2, min_free_bytes=0,
                  app_command=f"{sys.executable} -c pass {{input}} {{output}}")
    values.update(overrides)
    return ListenerConfig(**values)


def associate(port: int, source: str = "127.0.0.1", syntaxes=None):
    ae = AE(ae_title=ROUTER_AE)
    ae.acse_timeout = 5
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage,
                             syntaxes or [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=LISTENER_AE, bind_address=(source, 0))


def idle_connections(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def test_idle_connections_from_unknown_hosts_cannot_stall_the_router(tmp_path):
    """Row 1: 12 idle TCP connections no longer lock the router out (allow-list + ACSE timeout)."""
    listener = Listener(config(tmp_path, allowed_hosts=("127.0.0.2/32",), max_associations=4, acse_timeout=1.0))
    port = listener.start()[1]
    attackers = idle_connections(port, 12, "127.0.0.1")  # not in --allow-host: closed before any DICOM
    try:
        started = time.monotonic()
        assoc = associate(port, source="127.0.0.2")
        assert assoc.is_established, "the router was refused"
        assoc.release()
        assert time.monotonic() - started < 5
        attackers[0].settimeout(2)
        assert attackers[0].recv(1) == b""  # the listener closed it
    finally:
        for sock in attackers:
            sock.close()
        listener.stop()


def test_idle_connections_from_an_allowed_host_time_out(tmp_path):
    """Row 1 bis: even from an allowed address, silent connections are dropped after --acse-timeout."""
    listener = Listener(config(tmp_path, max_associations=4, acse_timeout=1.0))
    port = listener.start()[1]
    idle = idle_connections(port, 6)
    try:
        deadline = time.monotonic() + 8
        established = False
        while time.monotonic() < deadline and not established:
            assoc = associate(port)
            established = assoc.is_established
            if established:
                assoc.release()
            else:
                time.sleep(0.5)
        assert established, "the idle connections held the association slots"
        assert time.monotonic() < deadline
    finally:
        for sock in idle:
            sock.close()
        listener.stop()


def _big_dataset(nih: Path, megabytes: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(nih)
    side = int((megabytes * 2**20) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros(side * side, np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def test_an_oversized_data_set_is_cut_off_not_stored(tmp_path, nih):
    """Row 2: past --max-dataset-mb the association is aborted; nothing is stored, nothing left behind."""
    listener = Listener(config(tmp_path, max_dataset_bytes=4 * 2**20, network_timeout=0.5, dimse_timeout=0.5))
    port = listener.start()[1]
    try:
        assoc = associate(port)
        assert assoc.is_established
        status = assoc.send_c_store(_big_dataset(nih, 16))
        assert not status or getattr(status, "Status", None) != 0x0000
        deadline = time.monotonic() + 10  # the requestor's thread learns of the abort a moment later
        while assoc.is_established and not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted or not assoc.is_established
        small = associate(port)  # and the listener still serves
        assert small.send_c_store(nih).Status == 0x0000
        small.release()
    finally:
        listener.stop()
    spool = tmp_path / "spool"
    stored = [p for p in (spool / "incoming").rglob("*.dcm")]
    assert len(stored) == 1 and stored[0].stat().st_size < 4 * 2**20
    time.sleep(1.2)
    listener.process_once()  # the half-received file of the aborted association is tidied
    assert list((spool / "receiving").iterdir()) == []


def test_deflated_transfer_syntax_is_declined(tmp_path):
    """Row 2 bis: a deflated data set (a zip bomb in DICOM) is never accepted."""
    listener = Listener(config(tmp_path))
    port = listener.start()[1]
    try:
        assoc = associate(port, syntaxes=[pydicom.uid.DeflatedExplicitVRLittleEndian])
        assert not assoc.accepted_contexts or all(c.transfer_syntax[0] != pydicom.uid.DeflatedExplicitVRLittleEndian
                                                  for c in assoc.accepted_contexts)
        if assoc.is_established:
            assoc.release()
    finally:
        listener.stop()


def test_no_space_for_job_json_leaves_the_study_in_incoming_for_the_next_poll(tmp_path, nih, monkeypatch):
    """Row 3: ENOSPC while the job is created: the study is not lost, it becomes a job next time."""
    listener = Listener(config(tmp_path))
    listener.spool.store(nih.read_bytes(), "1.2.3", "1.2.3.4")
    real_save = JobState.save
    monkeypatch.setattr(JobState, "save", lambda self, path: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    time.sleep(0.3)
    with pytest.raises(OSError):
        listener.spool.take_complete_studies(time.time(), 0.2)
    assert (tmp_path / "spool" / "incoming" / "1.2.3" / "1.2.3.4.dcm").is_file()
    assert listener.spool.pending_jobs() == [] and list((tmp_path / "spool" / "jobs").iterdir()) == []
    monkeypatch.setattr(JobState, "save", real_save)
    (job,) = listener.spool.take_complete_studies(time.time(), 0.2)
    assert (job / "input" / "1.2.3.4.dcm").is_file() and (job / "job.json").is_file()


def test_a_crash_between_job_json_and_the_move_is_recovered(tmp_path, nih):
    """Row 3 bis: the crash instant between the two steps leaves a job folder without input: removed at start."""
    listener = Listener(config(tmp_path))
    listener.spool.store(nih.read_bytes(), "1.2.3", "1.2.3.4")
    half = tmp_path / "spool" / "jobs" / "1.2.3.1"
    half.mkdir()
    JobState(study="1.2.3").save(half / "job.json")
    assert listener.spool.recover() and not half.exists()
    time.sleep(0.3)
    (job,) = listener.spool.take_complete_studies(time.time(), 0.2)
    assert (job / "input" / "1.2.3.4.dcm").is_file()


def test_an_unreadable_job_is_quarantined_and_does_not_block_the_others(tmp_path, nih):
    """Row 4: an empty job.json (a power cut) no longer blocks every later job."""
    listener = Listener(config(tmp_path))
    for study in ("1.2.3", "1.2.4"):
        listener.spool.store(nih.read_bytes(), study, f"{study}.1")
    time.sleep(0.3)
    first, second = listener.spool.take_complete_studies(time.time(), 0.2)
    (first / "job.json").write_bytes(b"")
    listener.process_once()
    failed = tmp_path / "spool" / "failed" / first.name
    assert failed.is_dir() and "job.json cannot be read" in (failed / "QUARANTINED.txt").read_text()
    assert JobState.load(second / "job.json").attempts == 1  # the next job ran (the stand-in app writes no summary: a retry)
    status = json.loads((tmp_path / "spool" / "status.json").read_text())
    assert status["failed_jobs"] == 1 and "job.json cannot be read" in status["failed"][first.name]


def test_failed_jobs_are_counted_and_can_be_requeued(tmp_path, nih, capsys):
    """Row 5: a PACS down for a while: the jobs end in failed/, status.json says so, one command re-sends."""
    app = tmp_path / "app.py"
    app.write_text("import json, shutil, sys\nfrom pathlib import Path\n"
                   "out = Path(sys.argv[2]); (out / 'r').mkdir(parents=True)\n"
                   "shutil.copy(next(Path(sys.argv[1]).glob('*.dcm')), out / 'r' / 'x.dcm')\n"
                   "(out / 'summary.json').write_text(json.dumps({'exit_code': 0}))\n")
    listener = Listener(config(tmp_path, app_command=f"{sys.executable} {app} {{input}} {{output}}"))
    listener.spool.store(nih.read_bytes(), "1.2.3", "1.2.3.1")
    time.sleep(0.3)
    for _ in range(6):
        listener.process_once()
        time.sleep(0.2)
    status = json.loads((tmp_path / "spool" / "status.json").read_text())
    assert status["failed_jobs"] == 1 and "association not established" in next(iter(status["failed"].values()))
    assert main(["requeue", "--spool", str(tmp_path / "spool")]) == 0
    assert "requeued 1 job(s)" in capsys.readouterr().out
    (job,) = listener.spool.pending_jobs()
    assert JobState.load(job / "job.json").attempts == 0
    assert json.loads((tmp_path / "spool" / "status.json").read_text())["failed_jobs"] == 0


def test_spool_is_private(tmp_path, nih):
    """Row 9: patient data readable by the listener's user only."""
    listener = Listener(config(tmp_path))
    port = listener.start()[1]
    try:
        assoc = associate(port)
        assert assoc.send_c_store(nih).Status == 0x0000
        assoc.release()
    finally:
        listener.stop()
    spool = tmp_path / "spool"
    time.sleep(0.3)
    listener.spool.take_complete_studies(time.time(), 0.2)
    for path in spool.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


def test_a_disk_below_its_reserve_refuses_new_connections(tmp_path, nih, monkeypatch):
    listener = Listener(config(tmp_path, min_free_bytes=10 * 2**30))
    monkeypatch.setattr(listener.spool, "free_bytes", lambda: 2**30)
    port = listener.start()[1]
    try:
        assert not associate(port).is_established
    finally:
        listener.stop()


def test_limits_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--allow-host"):
        config(tmp_path, allowed_hosts=("not-an-address",))
    with pytest.raises(ValueError, match="max_associations must be positive"):
        config(tmp_path, max_associations=0)
    assert listener_module.ACCEPTED_TRANSFER_SYNTAXES and pydicom.uid.DeflatedExplicitVRLittleEndian not in listener_module.ACCEPTED_TRANSFER_SYNTAXES
