"""DICOM network round trip: Orthanc (a real PACS) → the listener → the app → Orthanc.

The real DICOMs are stored in a throw-away Orthanc, Orthanc sends each study to the listener (as a
PACS "send to AI node" or a router would: Orthanc's own C-STORE SCU, calling AE ORTHANC), the listener
(``python -m deploy.listener`` in a subprocess, random model pack) runs the app per complete study and
C-STOREs the results back. The test then finds the result series in Orthanc by StudyInstanceUID,
downloads them and reads them with highdicom; SC and SR series are checked too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.orthanc import AE_TITLE as ORTHANC_AE
from tests.support.orthanc import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")]

REPO = Path(__file__).resolve().parents[2]
LISTENER_AE = "CXR_OPACITY"
#: Result series carry this in their description (the SEG, SC and SR builders all add it).
RESULT_MARKER = "NOT FOR CLINICAL USE"
RESULTS_TIMEOUT_S = 420


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@pytest.fixture(scope="module", params=["checkout", "image"])
def round_trip(request, orthanc_factory, deploy_models, two_studies, tmp_path_factory):
    """Run the whole round trip once per app command; yield what the checks need, then stop the listener.

    ``checkout``: the listener's default app command (``python -m app`` from this checkout). ``image``:
    ``--app-command`` runs the MAP image per study (``deploy.run_image``, as a platform runs it, with
    the models baked into the image); skipped, saying so, where no container engine is installed.
    """
    listener_port = free_port()
    app_command = []
    if request.param == "image":
        image = request.getfixturevalue("map_image")["image"]
        app_command = ["--app-command", f"{sys.executable} -m deploy.run_image --image {image} {{input}} {{output}}"]
    orthanc = orthanc_factory({"cxr": (LISTENER_AE, listener_port)})
    folder = tmp_path_factory.mktemp("listener")
    spool, log_path = folder / "spool", folder / "listener.log"
    command = [sys.executable, "-m", "deploy.listener", "--models", str(deploy_models), "--spool", str(spool),
               "--allow", ORTHANC_AE, "--destination", f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}",
               "--ae-title", LISTENER_AE, "--port", str(listener_port),
               "--idle-seconds", "3", "--poll-seconds", "0.5", "--retry-seconds", "5", *app_command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        listener = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:  # ready when Orthanc can C-ECHO it (also proves Orthanc is an allowed caller)
            try:
                orthanc.post("/modalities/cxr/echo", {})
                break
            except (urllib.error.HTTPError, urllib.error.URLError):
                assert listener.poll() is None, _tail(log_path)
                assert time.monotonic() < deadline, "listener did not answer C-ECHO:\n" + _tail(log_path)
                time.sleep(0.5)

        studies = {}
        for path in sorted(two_studies.glob("*.dcm")):
            uploaded = orthanc.upload(path)
            source = pydicom.dcmread(path, stop_before_pixels=True)
            studies[source.StudyInstanceUID] = (uploaded["ParentStudy"], source)
        started = time.monotonic()
        orthanc.post("/modalities/cxr/store", {"Resources": [sid for sid, _ in studies.values()], "Synchronous": True})

        deadline = started + RESULTS_TIMEOUT_S
        while True:
            found = {uid: [s for s in orthanc.find_series(uid) if RESULT_MARKER in s["MainDicomTags"].get("SeriesDescription", "")]
                     for uid in studies}
            seg_counts = [sum(s["MainDicomTags"]["Modality"] == "SEG" for s in series) for series in found.values()]
            spool_empty = not any((spool / "jobs").iterdir()) and not any((spool / "incoming").iterdir())
            if all(count >= 3 for count in seg_counts) and spool_empty:
                break
            # an empty spool means every job is done: results missing then will not come
            assert not spool_empty, f"spool done but results missing: {seg_counts}\n" + _tail(log_path)
            assert listener.poll() is None, "listener exited:\n" + _tail(log_path)
            assert time.monotonic() < deadline, f"results not in Orthanc after {RESULTS_TIMEOUT_S}s: {seg_counts}\n" + _tail(log_path)
            time.sleep(2)
        elapsed = time.monotonic() - started
        yield {"orthanc": orthanc, "studies": studies, "found": found, "spool": spool, "elapsed": elapsed,
               "listener_port": listener_port, "log": log_path, "listener": listener, "app": request.param}
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGTERM)
            try:
                listener.wait(timeout=30)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait()


def _download(orthanc, series: dict) -> pydicom.Dataset:
    (instance_id,) = series["Instances"]
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(instance_id)))


def test_seg_series_are_in_orthanc_and_read_back(round_trip, record_property):
    record_property("round_trip_seconds", round(round_trip["elapsed"], 1))  # the fixture bounds it (RESULTS_TIMEOUT_S)
    orthanc = round_trip["orthanc"]
    for study_uid, (_, source) in round_trip["studies"].items():
        segs = [s for s in round_trip["found"][study_uid] if s["MainDicomTags"]["Modality"] == "SEG"]
        descriptions = sorted(s["MainDicomTags"]["SeriesDescription"] for s in segs)
        assert len(segs) == 3, descriptions
        assert [d.split(" [")[0] for d in descriptions] == ["Opacity mask", "Opacity probability", "Opacity probability bands"]
        for series in segs:
            seg = hd.seg.Segmentation.from_dataset(_download(orthanc, series))
            assert seg.StudyInstanceUID == study_uid
            assert seg.PatientID == source.get("PatientID", "")
            assert seg.get_source_image_uids() == [(study_uid, source.SeriesInstanceUID, source.SOPInstanceUID)]
            assert seg.get_segment_description(1).segment_label.startswith("Opacity")


def test_sc_and_sr_series_arrive_with_the_segs(round_trip):
    """Heat-map SC (Modality OT) and opacity SR, one each per processed image, beside the three SEGs."""
    orthanc = round_trip["orthanc"]
    for study_uid, (_, source) in round_trip["studies"].items():
        modalities = sorted(series["MainDicomTags"]["Modality"] for series in round_trip["found"][study_uid])
        assert modalities == ["OT", "SEG", "SEG", "SEG", "SR"], modalities
        for series in round_trip["found"][study_uid]:
            modality = series["MainDicomTags"]["Modality"]
            if modality == "OT":
                sc = _download(orthanc, series)
                assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
                assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
                assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
            elif modality == "SR":
                sr = hd.sr.Comprehensive3DSR.from_dataset(_download(orthanc, series))
                assert sr.StudyInstanceUID == study_uid
                evidence = {uid for _, _, uid, _ in sr.get_evidence()}
                seg_uids = {orthanc.get(f"/instances/{s['Instances'][0]}")["MainDicomTags"]["SOPInstanceUID"]
                            for s in round_trip["found"][study_uid] if s["MainDicomTags"]["Modality"] == "SEG"}
                assert source.SOPInstanceUID in evidence and evidence & seg_uids
            else:
                assert modality == "SEG", f"unexpected result series {series['MainDicomTags']}"


def test_spool_is_emptied_after_delivery(round_trip):
    spool = round_trip["spool"]
    assert not list((spool / "jobs").iterdir()) and not list((spool / "failed").iterdir())
    log = round_trip["log"].read_text()
    assert log.count("delivered; spool") == len(round_trip["studies"]), _tail(round_trip["log"])


def test_listener_binds_loopback_only(round_trip):
    port = round_trip["listener_port"]
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
            listening.append(local.rsplit(":", 1)[0])
    assert listening == ["0100007F"], listening  # 127.0.0.1, nothing else


@pytest.mark.parametrize("calling, called", [("INTRUDER", LISTENER_AE), (ORTHANC_AE, "WRONG_CALLED")])
def test_listener_rejects_unknown_callers(round_trip, calling, called):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", round_trip["listener_port"], ae_title=called)
    try:
        assert assoc.is_rejected
    finally:
        if assoc.is_established:
            assoc.release()


def test_each_study_ran_through_the_app_command_chosen(round_trip):
    """The image variant really ran the MAP's entrypoint per study (its log line), the checkout variant did not."""
    logs = sorted((round_trip["spool"] / "logs").glob("*.log"))
    assert len(logs) == len(round_trip["studies"]), [p.name for p in logs]
    for log in logs:
        launched = "Launching application python3 /opt/holoscan/app" in log.read_text(errors="replace")
        assert launched == (round_trip["app"] == "image"), log.read_text(errors="replace")[-2000:]
