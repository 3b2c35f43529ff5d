"""The listener's own rules, in-process and fast: a stand-in app command instead of the real app.

Receiving (C-STORE into the spool, unsafe UIDs refused), keeping received data until delivery,
retrying delivery only (the app is not run again) after a restart, giving up into failed/, and
STOW-RS, against a throw-away Orthanc. The real app runs in test_orthanc_round_trip.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pynetdicom import AE

from deploy.listener import Destination, JobState, Listener, ListenerConfig, Spool, is_safe_uid, send_stow
from tests.support.orthanc import AE_TITLE as ORTHANC_AE
from tests.support.orthanc import free_port

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")

REPO = Path(__file__).resolve().parents[2]
LISTENER_AE = "CXR_OPACITY"
ROUTER_AE = "ROUTER"

#: Stand-in for ``python -m app``: "ok" writes an empty BINARY SEG per input image and summary.json
#: (exit code 0), "nothing" writes summary.json with exit code 3, "crash" exits 1 and writes nothing.
FAKE_APP = """
import json, sys
from pathlib import Path
import numpy as np, pydicom
from operators.lib.seg_output import AlgorithmInfo, build_binary_seg
from operators.lib.atomic_file import write_dicom_atomically
source, output, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if mode == "crash":
    raise SystemExit(1)
if mode == "ok":
    for path in sorted(source.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        (output / ds.SOPInstanceUID).mkdir()
        seg = build_binary_seg(ds, np.zeros((ds.Rows, ds.Columns), bool), None, AlgorithmInfo("fake-app", "0", "zones"))
        write_dicom_atomically(seg, output / ds.SOPInstanceUID / "seg_binary.dcm")
(output / "summary.json").write_text(json.dumps({"exit_code": 0 if mode == "ok" else 3}))
"""


@pytest.fixture(scope="module")
def fake_app(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake_app") / "fake_app.py"
    path.write_text(FAKE_APP)
    return path


@pytest.fixture(scope="module")
def nih(dicom_dir) -> Path:
    return next(dicom_dir.glob("misc/nih_*.dcm"))


def make_config(tmp_path: Path, fake_app: Path, mode: str, destination: Destination, **overrides) -> ListenerConfig:
    values = dict(models=tmp_path / "models", spool=tmp_path / "spool", allowed_calling_aets=(ROUTER_AE,),
                  destination=destination, ae_title=LISTENER_AE, port=free_port(), idle_seconds=0.2,
                  retry_seconds=0.1, max_attempts=3, app_command=f"{sys.executable} {fake_app} {{input}} {{output}} {mode}")
    values.update(overrides)
    return ListenerConfig(**values)


def c_store(port: int, dataset_or_path) -> int:
    ae = AE(ae_title=ROUTER_AE)
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage,
                             [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AE)
    assert assoc.is_established
    try:
        return assoc.send_c_store(dataset_or_path).Status
    finally:
        assoc.release()


def closed_port_destination() -> Destination:
    return Destination(ORTHANC_AE, "127.0.0.1", free_port())  # nothing listens there


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # the planted unsafe UID
def test_received_study_is_kept_until_delivered_then_removed(orthanc_factory, fake_app, nih, tmp_path):
    orthanc = orthanc_factory({"cxr": (LISTENER_AE, 1)})
    source = pydicom.dcmread(nih, stop_before_pixels=True)

    # 1. Receive by C-STORE; the PACS is unreachable, so delivery fails and everything is kept.
    first = Listener(make_config(tmp_path, fake_app, "ok", closed_port_destination()))
    port = first.start()[1]
    try:
        assert c_store(port, nih) == 0x0000
        unsafe = pydicom.dcmread(nih)
        before = config.settings.writing_validation_mode
        config.settings.writing_validation_mode = config.IGNORE
        try:
            unsafe.StudyInstanceUID = "../../escape"
        finally:
            config.settings.writing_validation_mode = before
        assert c_store(port, unsafe) == 0xC000  # refused, nothing written outside the spool
        time.sleep(0.3)
        first.process_once()
    finally:
        first.stop()
    (job,) = first.spool.pending_jobs()
    state = JobState.load(job / "job.json")
    assert state.study == source.StudyInstanceUID and state.attempts == 1
    assert "association not established" in state.last_error
    assert [p.name for p in (job / "input").iterdir()] == [f"{source.SOPInstanceUID}.dcm"]
    (seg_path,) = (job / "output").rglob("seg_binary.dcm")
    seg_uid = pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID
    assert not (tmp_path / "escape").exists() and list(first.spool.incoming.iterdir()) == []

    # 2. A restarted listener (same spool) with a reachable PACS delivers without running the app again.
    second = Listener(make_config(tmp_path, fake_app, "crash", Destination(ORTHANC_AE, "127.0.0.1", orthanc.dicom_port)))
    time.sleep(0.2)
    second.process_once()
    assert second.spool.pending_jobs() == [] and not job.exists()
    (series,) = orthanc.find_series(source.StudyInstanceUID, "SEG")
    stored = orthanc.get(f"/instances/{series['Instances'][0]}")["MainDicomTags"]["SOPInstanceUID"]
    assert stored == seg_uid  # the output of the first run: the "crash" app never ran


def test_app_failure_is_retried_then_kept_in_failed(fake_app, nih, tmp_path):
    listener = Listener(make_config(tmp_path, fake_app, "crash", closed_port_destination(), max_attempts=2))
    source = pydicom.dcmread(nih, stop_before_pixels=True)
    listener.spool.store(nih.read_bytes(), source.StudyInstanceUID, source.SOPInstanceUID)
    time.sleep(0.3)
    listener.process_once()
    assert len(listener.spool.pending_jobs()) == 1
    time.sleep(0.2)
    listener.process_once()
    assert listener.spool.pending_jobs() == []
    (kept,) = listener.spool.failed.iterdir()
    assert (kept / "input" / f"{source.SOPInstanceUID}.dcm").is_file()
    state = JobState.load(kept / "job.json")
    assert state.attempts == 2 and "app wrote no summary.json" in state.last_error
    assert (listener.spool.logs / f"{kept.name}.log").is_file()


def test_nothing_to_process_removes_the_job_without_sending(fake_app, nih, tmp_path):
    listener = Listener(make_config(tmp_path, fake_app, "nothing", closed_port_destination()))
    source = pydicom.dcmread(nih, stop_before_pixels=True)
    listener.spool.store(nih.read_bytes(), source.StudyInstanceUID, source.SOPInstanceUID)
    time.sleep(0.3)
    listener.process_once()
    assert listener.spool.pending_jobs() == [] and list(listener.spool.failed.iterdir()) == []


def test_stow_rs_stores_in_orthanc(orthanc_factory, nih, tmp_path):
    orthanc = orthanc_factory({})
    if not orthanc.has_dicomweb:
        pytest.skip("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is not installed")
    import numpy as np

    from operators.lib.atomic_file import write_dicom_atomically
    from operators.lib.seg_output import AlgorithmInfo, build_binary_seg

    source = pydicom.dcmread(nih, stop_before_pixels=True)
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, AlgorithmInfo("stow", "0", "zones"))
    path = tmp_path / "seg.dcm"
    write_dicom_atomically(seg, path)
    assert send_stow([path], f"{orthanc.url}/dicom-web/studies") == []
    assert [s["MainDicomTags"]["SeriesInstanceUID"] for s in orthanc.find_series(source.StudyInstanceUID, "SEG")] == [seg.SeriesInstanceUID]
    failures = send_stow([path], f"{orthanc.url}/no-such-endpoint")
    assert len(failures) == 1 and "HTTP 404" in failures[0]


def test_configuration_is_checked(tmp_path):
    assert Destination.parse("PACS@10.1.2.3:104") == Destination("PACS", "10.1.2.3", 104)
    for bad in ("PACS:104", "PACS@host", "A_TITLE_LONGER_THAN_16@h:1", "PACS@h:70000"):
        with pytest.raises(ValueError, match="AE_TITLE@HOST:PORT"):
            Destination.parse(bad)
    base = dict(models=tmp_path, spool=tmp_path, destination=Destination("P", "127.0.0.1", 104))
    with pytest.raises(ValueError, match="calling AE title must be allowed"):
        ListenerConfig(allowed_calling_aets=(), **base)
    with pytest.raises(ValueError, match=r"\{input\}"):
        ListenerConfig(allowed_calling_aets=("R",), app_command="run {output}", **base)
    assert is_safe_uid("1.2.840.10008") and not is_safe_uid("../1.2") and not is_safe_uid("1." * 40)


def test_command_line_help():
    proc = subprocess.run([sys.executable, "-m", "deploy.listener", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0
    for option in ("--allow", "--destination", "--stow-url", "--bind", "--idle-seconds", "--app-command"):
        assert option in proc.stdout


def test_spool_store_is_atomic(tmp_path, nih):
    spool = Spool(tmp_path)
    target = spool.store(nih.read_bytes(), "1.2.3", "1.2.3.4")
    assert target == tmp_path / "incoming" / "1.2.3" / "1.2.3.4.dcm"
    assert [p.name for p in target.parent.iterdir()] == ["1.2.3.4.dcm"]  # no temporary file left
    assert target.read_bytes() == nih.read_bytes()
