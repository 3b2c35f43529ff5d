"""TID 1500 opacity report (Comprehensive 3D SR) on real CR / DX / SC sources from shared/data/dicom.

Each SR references a BINARY SEG built on the same source; both are written, the SR is checked by
dciodvfy (no "Error" line, only the source-data warnings of test_seg_output.py) and read back with
highdicom's own SR reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from operators.lib.components import Box
from operators.lib.seg_output import AlgorithmInfo, build_binary_seg, build_probability_seg, write_dataset_atomically
from operators.lib.sr_output import (
    OPACITY_CODE,
    PROCEDURE_CODE,
    SCORE_CODE,
    SCORE_TRACKING_ID,
    SEGMENT_TRACKING_ID,
    build_opacity_sr,
)
from tests.support.dicom_checks import ALLOWED_WARNINGS, dciodvfy_lines, read_header
from tests.support.dicom_checks import SOURCES as SEG_SOURCES

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")

ALGORITHM = AlgorithmInfo(name="cxr-lung-opacity", version="0.1.0", preset="zones")
#: One source of each kind (JPEG CR in an SC SOP class, uncompressed MONOCHROME1 CR, DX secondary capture).
SOURCES = {key: SEG_SOURCES[key] for key in ("rsna-0004", "nema-rg1-uncr", "nih-dx-sc")}
#: An opacity region (top, left, bottom, right), used as the mask and as the reported region.
BOX = (100, 200, 300, 400)


@dataclass
class Built:
    source: pydicom.Dataset
    seg: hd.seg.Segmentation
    path: Path


@pytest.fixture(scope="module", params=sorted(SOURCES))
def built(request, dicom_dir, tmp_path_factory) -> Built:
    source = read_header(next(dicom_dir.glob(SOURCES[request.param])))
    mask = np.zeros((source.Rows, source.Columns), bool)
    top, left, bottom, right = BOX
    mask[top:bottom, left:right] = True
    seg = build_binary_seg(source, mask, mask, ALGORITHM)
    sr = build_opacity_sr(source, seg, 0.62, True, 0.5, ALGORITHM, regions=[Box(*BOX)])
    folder = tmp_path_factory.mktemp(request.param)
    write_dataset_atomically(seg, folder / "seg_binary.dcm")
    write_dataset_atomically(sr, folder / "sr_opacity.dcm")
    return Built(source, seg, folder / "sr_opacity.dcm")


def test_sr_dciodvfy_finds_no_error(built, dciodvfy):
    lines = dciodvfy_lines(dciodvfy, built.path)
    assert not [line for line in lines if "Error" in line], "\n".join(lines)
    unexpected = [w for w in lines if w.startswith("Warning") and not any(p.search(w) for p in ALLOWED_WARNINGS)]
    assert not unexpected, "\n".join(unexpected)


def test_sr_header(built):
    sr = hd.sr.srread(built.path)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == built.source.StudyInstanceUID
    assert sr.PatientID == built.source.get("PatientID", "")
    assert int(sr.SeriesNumber) == 9104
    assert sr.SeriesDescription.endswith("NOT FOR CLINICAL USE")
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {built.source.SOPInstanceUID, built.seg.SOPInstanceUID}
    assert "PatientAge" not in sr or sr.PatientAge != "51"


def test_sr_reports_score_decision_and_algorithm(built):
    sr = hd.sr.srread(built.path)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    procedure = hd.sr.utils.find_content_items(sr, name=codes.DCM.ProcedureReported)[0]
    assert hd.sr.CodedConcept.from_dataset(procedure.ConceptCodeSequence[0]) == PROCEDURE_CODE
    (group,) = sr.content.get_image_measurement_groups(tracking_uid=None)
    assert group.tracking_identifier == SCORE_TRACKING_ID
    (measurement,) = group.get_measurements(name=SCORE_CODE)
    assert measurement.value == pytest.approx(0.62)
    assert measurement.unit.value == "1"
    (decision,) = group.get_qualitative_evaluations(name=OPACITY_CODE)
    assert decision.value == codes.SCT.Present
    (algorithm,) = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmName, recursive=True)[:1]
    assert algorithm.TextValue == ALGORITHM.name
    parameters = [item.TextValue for item in hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmParameters, recursive=True)]
    assert "preset=zones" in parameters and "gate_threshold=0.5" in parameters


def test_sr_references_the_seg_segment_and_the_region(built):
    sr = hd.sr.srread(built.path)
    segment_group, region_group = sr.content.get_planar_roi_measurement_groups()
    assert segment_group.tracking_identifier == SEGMENT_TRACKING_ID
    assert segment_group.tracking_uid == built.seg.get_segment_description(1).tracking_uid
    assert segment_group.reference_type == codes.DCM.ReferencedSegmentationFrame
    reference = segment_group.referenced_segmentation_frame
    seg_ref = reference[0].ReferencedSOPSequence[0]
    assert seg_ref.ReferencedSOPInstanceUID == built.seg.SOPInstanceUID
    assert int(seg_ref.ReferencedSegmentNumber) == 1
    assert reference.source_image_for_segmentation.referenced_sop_instance_uid == built.source.SOPInstanceUID
    region = region_group.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    top, left, bottom, right = BOX
    np.testing.assert_array_equal(region.value, [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]])
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == built.source.SOPInstanceUID


def test_negative_study_against_probability_seg(dicom_dir, tmp_path, dciodvfy_errors):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    seg = build_probability_seg(source, np.zeros((source.Rows, source.Columns), np.float32), ALGORITHM)
    sr = build_opacity_sr(source, seg, 0.12, False, 0.5, ALGORITHM, regions=[(0, 0, 10, 10)])  # a plain tuple
    path = tmp_path / "sr.dcm"
    write_dataset_atomically(sr, path)
    assert not dciodvfy_errors(path)
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations(name=OPACITY_CODE)[0].value == codes.SCT.Absent


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opacity_score": 1.5}, "opacity_score"),
        ({"opacity_score": float("nan")}, "opacity_score"),
        ({"threshold": -0.1}, "threshold"),
        ({"regions": [(0, 0, 0, 10)]}, "Region 1"),
        ({"regions": [(0, 0, 10, 5000)]}, "Region 1"),
    ],
)
def test_sr_input_is_checked(dicom_dir, kwargs, match):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    arguments = {"opacity_score": 0.5, "positive": True, "threshold": 0.5, **kwargs}
    regions = arguments.pop("regions", ())
    with pytest.raises(ValueError, match=match):
        build_opacity_sr(source, seg, algorithm=ALGORITHM, regions=regions, **arguments)


def test_sr_refuses_a_seg_of_another_image(dicom_dir):
    nih = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    rsna = read_header(next(dicom_dir.glob("rsna/0004cfab-*.dcm")))
    seg = build_binary_seg(rsna, np.zeros((rsna.Rows, rsna.Columns), bool), None, ALGORITHM)
    with pytest.raises(ValueError, match="study"):
        build_opacity_sr(nih, seg, 0.5, True, 0.5, ALGORITHM)
