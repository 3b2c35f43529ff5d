"""Bad input, all in ONE folder, ONE app run: every file gets its expected outcome and reason.

The cases (tests/reliability/cases.py) are generated from the real RSNA / NEMA files: not DICOM,
empty, truncated header, truncated native and JPEG pixel data, garbage JPEG, no pixel data, a
constant image, CT / SR / SEG objects, a lateral view, a knee, 16×16 and 6000×6000 images, a
16-bit MONOCHROME1 with a VOI LUT Sequence, no PhotometricInterpretation / PixelSpacing /
PatientOrientation, a duplicate SOP Instance UID, a multi-frame DX, an RGB image, and several
patients and studies with Latin-1, Greek, Japanese (UTF-8 and ISO 2022 IR 87) and Korean (ISO 2022
IR 149) names and an undefined character set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from operators.lib.dicom_input import decode_pixels, load_cxr
from tests.support import cases
from tests.support.app_runner import RESULT_FILES, check_result_folder

pytestmark = pytest.mark.e2e
NAMES = [name for name, *_ in cases.CASES]
#: the 6000×6000 case on two CPU cores with the 128-px pack: ~25–35 s and ~2.8 GB peak (measured)
HUGE_CASE_SECONDS = 120
HUGE_PEAK_RSS = 5 * 2**30


@pytest.fixture(scope="module")
def run(bad_input_run):
    assert bad_input_run.returncode == 0, bad_input_run.stderr[-4000:]
    return bad_input_run


@pytest.fixture(scope="module")
def records(run, bad_input) -> dict[str, dict]:
    """summary.json's records by path relative to the input folder."""
    folder, _ = bad_input
    return {Path(r["path"]).relative_to(folder).as_posix(): r for r in run.summary["files"]}


@pytest.fixture(scope="module")
def expected(bad_input) -> dict[str, cases.Case]:
    return {case.name: case for case in bad_input[1]}


def _result(run, record) -> dict:
    return json.loads((run.output / record["case_id"] / "result.json").read_text())


def test_every_input_file_is_accounted_for_exactly_once(run, bad_input, expected):
    folder, _ = bad_input
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    listed = sorted(Path(r["path"]).relative_to(folder).as_posix() for r in run.summary["files"])
    assert listed == on_disk == sorted(expected)
    outcomes = [case.outcome for case in expected.values()]
    assert run.summary["counts"] == {o: outcomes.count(o) for o in ("processed", "refused", "skipped", "failed")}


@pytest.mark.parametrize("name", NAMES)
def test_outcome_and_reason(name, records, expected, run, bad_input):
    case, record = expected[name], records[name]
    assert record["outcome"] == case.outcome, f"{case.what}: {record}"
    if case.outcome == "processed":
        assert record["reason"] is None
        assert RESULT_FILES <= {Path(p).name for p in record["outputs"]}
        assert all(Path(p).is_file() for p in record["outputs"])
    else:
        path = str(bad_input[0] / name)
        assert record["reason"].startswith(f"{path}: "), f"the reason must name the file: {record['reason']}"
        assert re.search(case.reason, record["reason"]), f"{case.what}: {record['reason']}"
        assert path in run.stderr, "the log names the refused file too"


def test_processed_results_are_complete_and_in_the_source_study(run, records, expected, bad_input):
    for name, case in expected.items():
        if case.outcome != "processed":
            continue
        record = records[name]
        folder = run.output / record["case_id"]
        check_result_folder(folder)
        assert {p.name for p in folder.iterdir()} == {Path(p).name for p in record["outputs"]}, name
        source = pydicom.dcmread(bad_input[0] / name, stop_before_pixels=True)
        for seg_name, seg_type in (("seg_probability.dcm", "FRACTIONAL"), ("seg_binary.dcm", "BINARY")):
            seg = hd.seg.segread(folder / seg_name)
            assert seg.SegmentationType == seg_type
            assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns), name
            assert seg.StudyInstanceUID == source.StudyInstanceUID, name
            assert seg.PatientID == source.PatientID, name
            assert str(seg.PatientName) == str(source.PatientName), name
            referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            assert referenced == source.SOPInstanceUID, name


def test_several_patients_and_studies_keep_their_own_identity(run, records, bad_input):
    seen = {}
    for name in ("patients/a_study1_latin1.dcm", "patients/a_study2_latin1.dcm", "patients/Παπαδοπούλου_utf8.dcm",
                 "patients/c_iso2022_jis.dcm", "patients/d_utf8_japanese.dcm", "patients/e_iso2022_korean.dcm",
                 "patients/f_unknown_charset.dcm"):
        seg = pydicom.dcmread(run.output / records[name]["case_id"] / "seg_binary.dcm", stop_before_pixels=True)
        seen[name] = (seg.PatientID, str(seg.PatientName), seg.StudyInstanceUID)
    assert seen["patients/a_study1_latin1.dcm"][:2] == seen["patients/a_study2_latin1.dcm"][:2] == ("PAT-A", "Müller^Zoë")
    assert len({study for _, _, study in seen.values()}) == 7
    assert seen["patients/Παπαδοπούλου_utf8.dcm"][1] == "Παπαδοπούλου^Ελένη"
    assert seen["patients/c_iso2022_jis.dcm"][1] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert seen["patients/d_utf8_japanese.dcm"][1] == "山田^花子"
    assert seen["patients/e_iso2022_korean.dcm"][1] == "Hong^Gildong=洪^吉洞=홍^길동"  # written as UTF-8
    warnings = _result(run, records["patients/f_unknown_charset.dcm"])["warnings"]
    assert any("'ISO_IR 999'] is not a defined term" in w for w in warnings), warnings


@pytest.mark.parametrize("name", ["no_pixel_spacing.dcm", "no_patient_orientation.dcm", "mono1_voi_lut.dcm",
                                  "patients/Παπαδοπούλου_utf8.dcm", "patients/c_iso2022_jis.dcm",
                                  "patients/e_iso2022_korean.dcm"])
def test_segs_of_awkward_sources_pass_dciodvfy(name, run, records, dciodvfy_errors):
    for seg_name in ("seg_probability.dcm", "seg_binary.dcm"):
        path = run.output / records[name]["case_id"] / seg_name
        assert dciodvfy_errors(path) == [], f"{name} → {seg_name}"


def test_duplicate_sop_instance_uid_gets_both_results(run, records):
    first, second = records["duplicate_uid_1.dcm"], records["duplicate_uid_2.dcm"]
    assert second["case_id"] == f"{first['case_id']}_2"
    warnings = _result(run, second)["warnings"]
    assert any("is shared with" in w and "duplicate_uid_1.dcm" in w for w in warnings), warnings
    a = pydicom.dcmread(run.output / first["case_id"] / "seg_binary.dcm", stop_before_pixels=True)
    b = pydicom.dcmread(run.output / second["case_id"] / "seg_binary.dcm", stop_before_pixels=True)
    assert a.SOPInstanceUID != b.SOPInstanceUID  # the outputs are distinct objects


def test_huge_image_is_processed_at_full_size_in_acceptable_time_and_memory(run, records):
    record = records["huge_6000x6000.dcm"]
    seg = pydicom.dcmread(run.output / record["case_id"] / "seg_probability.dcm")
    assert (seg.Rows, seg.Columns) == (6000, 6000) and seg.pixel_array.shape == (6000, 6000)
    seconds = sum(_result(run, record)["timings_s"].values())
    assert seconds < HUGE_CASE_SECONDS, _result(run, record)["timings_s"]
    assert 0 < run.peak_rss < HUGE_PEAK_RSS, f"peak RSS {run.peak_rss / 2**30:.2f} GiB"
    print(f"6000×6000: {seconds:.1f} s in the pipeline; app peak RSS {run.peak_rss / 2**30:.2f} GiB")


def test_no_partial_or_hidden_files_are_left(run):
    leftovers = [p for p in run.output.rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".partial")]
    assert leftovers == []


def test_voi_lut_sequence_is_applied_to_16_bit_monochrome1(bad_input):
    """In-process: the decoded image is exactly 1 − normalised(LUT[stored]), not the plain range."""
    path = bad_input[0] / "mono1_voi_lut.dcm"
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    entries, first, _ = item.LUTDescriptor
    table = np.asarray(item.LUTData, dtype=np.float64)
    stored = ds.pixel_array.astype(np.int64)
    mapped = table[np.clip(stored - first, 0, entries - 1)]
    expected = 1.0 - (mapped - mapped.min()) / (mapped.max() - mapped.min())
    pixels = decode_pixels(ds, path)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    plain = 1.0 - (stored - stored.min()) / (stored.max() - stored.min())
    assert np.abs(pixels - plain).mean() > 0.05  # the LUT made a difference
    assert load_cxr(path, "voi").warnings == ()
