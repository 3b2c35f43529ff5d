"""TID 1500 opacity report (Comprehensive 3D SR) on real CR / DX / SC sources (the ``dicom_dir`` fixture).

Each SR lists a BINARY SEG built on the same source as evidence; both are written, the SR is checked by
dciodvfy (no "Error" line, only the source-data warnings of the SEG tests), read back with highdicom's
own SR reader, and every measurement group has image coordinates (what OHIF needs to load it).
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
from operators.lib.seg_output import AlgorithmInfo, build_binary_seg, build_probability_seg
from operators.lib.atomic_file import write_dicom_atomically
from operators.lib.sr_output import (
    OPACITY_CODE,
    OUTSIDE_LUNG_CODE,
    PROCEDURE_CODE,
    SCORE_CODE,
    SCORE_TRACKING_ID,
    Region,
    build_opacity_sr,
    lung_box,
    opacity_regions,
)
from tests.support.dicom_checks import ALLOWED_WARNINGS, dciodvfy_lines, read_header
from tests.support.dicom_checks import SOURCES as SEG_SOURCES

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")

ALGORITHM = AlgorithmInfo(name="cxr-lung-opacity", version="0.1.0", preset="zones")
#: One source of each kind (JPEG CR in an SC SOP class, uncompressed MONOCHROME1 CR, DX secondary capture).
SOURCES = {key: SEG_SOURCES[key] for key in ("rsna-0004", "nema-rg1-uncr", "nih-dx-sc")}
#: An opacity region (top, left, bottom, right), used as the mask and as the reported region.
BOX = (100, 200, 300, 400)
#: Where the lungs are (the score group's rectangle).
LUNGS = (50, 60, 220, 480)


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
    sr = build_opacity_sr(source, seg, 0.62, True, 0.5, ALGORITHM, lungs=Box(*LUNGS), regions=[Region(Box(*BOX), 0.71, True)])
    folder = tmp_path_factory.mktemp(request.param)
    write_dicom_atomically(seg, folder / "seg_binary.dcm")
    write_dicom_atomically(sr, folder / "sr_opacity.dcm")
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


def _coordinates(measurement) -> list:
    """The SCOORDs a measurement is INFERRED FROM — where OHIF's SR tracking (dcmjs) looks for them."""
    items = [item for item in measurement[0].ContentSequence if item.ValueType == "SCOORD"]
    assert all(item.RelationshipType == "INFERRED FROM" for item in items)
    assert all(hd.sr.CodedConcept.from_dataset(item.ConceptNameCodeSequence[0]) == codes.DCM.ImageRegion for item in items)
    return measurement.referenced_coordinates


def _rectangle(top, left, bottom, right):
    return [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]


def test_sr_reports_score_decision_and_algorithm_on_the_lungs(built):
    sr = hd.sr.srread(built.path)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    procedure = hd.sr.utils.find_content_items(sr, name=codes.DCM.ProcedureReported)[0]
    assert hd.sr.CodedConcept.from_dataset(procedure.ConceptCodeSequence[0]) == PROCEDURE_CODE
    assert sr.content.get_planar_roi_measurement_groups() == []  # TID 1501 groups: coordinates in the measurement
    group = sr.content.get_image_measurement_groups()[0]
    assert group.tracking_identifier == SCORE_TRACKING_ID
    (measurement,) = group.get_measurements(name=SCORE_CODE)
    (rectangle,) = _coordinates(measurement)
    np.testing.assert_array_equal(rectangle.value, _rectangle(*LUNGS))
    assert rectangle.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == built.source.SOPInstanceUID
    assert measurement.value == pytest.approx(0.62)
    assert measurement.unit.value == "1"
    (decision,) = group.get_qualitative_evaluations(name=OPACITY_CODE)
    assert decision.value == codes.SCT.Present
    assert [site.value.value for site in group.finding_sites] == [codes.SCT.Lung.value]
    (algorithm,) = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmName, recursive=True)[:1]
    assert algorithm.TextValue == ALGORITHM.name
    parameters = [item.TextValue for item in hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmParameters, recursive=True)]
    assert "preset=zones" in parameters and "gate_threshold=0.5" in parameters


def test_sr_region_groups_have_rectangle_probability_and_site(built):
    sr = hd.sr.srread(built.path)
    _, region_group = sr.content.get_image_measurement_groups()
    assert region_group.tracking_identifier == "Lung opacity region 1"
    (measurement,) = region_group.get_measurements(name=SCORE_CODE)
    (region,) = _coordinates(measurement)
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_array_equal(region.value, _rectangle(*BOX))
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == built.source.SOPInstanceUID
    assert measurement.value == pytest.approx(0.71)
    assert [site.value.value for site in region_group.finding_sites] == [codes.SCT.Lung.value]


def test_regions_are_big_enough_largest_first_with_their_own_site_and_probability():
    opacity = np.zeros((200, 300), bool)
    lungs = np.zeros((200, 300), bool)
    lungs[20:180, 20:140] = True
    prob = np.full((200, 300), 0.6, np.float32)
    opacity[30:90, 30:100] = True  # in the lung: 4200 px
    prob[30:90, 30:100] = 0.8
    opacity[120:150, 200:260] = True  # outside: 1800 px
    opacity[5, 5] = True  # one pixel: below the minimum area (60 px for this image)
    regions = opacity_regions(opacity, lungs, prob)
    assert [r.box.as_list() for r in regions] == [[30, 30, 90, 100], [120, 200, 150, 260]]
    assert [r.in_lung for r in regions] == [True, False]
    assert regions[0].mean_probability == pytest.approx(0.8) and regions[1].mean_probability == pytest.approx(0.6)
    assert lung_box(lungs).as_list() == [20, 20, 180, 140]
    assert lung_box(np.zeros((4, 5), bool)).as_list() == [0, 0, 4, 5]


def test_region_outside_the_lungs_is_not_called_lung(dicom_dir, tmp_path):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    sr = build_opacity_sr(source, seg, 0.7, True, 0.5, ALGORITHM, regions=[Region(Box(0, 0, 40, 40), 0.9, False)])
    path = tmp_path / "sr.dcm"
    write_dicom_atomically(sr, path)
    _, region_group = hd.sr.srread(path).content.get_image_measurement_groups()
    assert [site.value.value for site in region_group.finding_sites] == [OUTSIDE_LUNG_CODE.value]


def test_negative_study_against_probability_seg(dicom_dir, tmp_path, dciodvfy_errors):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    seg = build_probability_seg(source, np.zeros((source.Rows, source.Columns), np.float32), ALGORITHM)
    sr = build_opacity_sr(source, seg, 0.12, False, 0.5, ALGORITHM)
    path = tmp_path / "sr.dcm"
    write_dicom_atomically(sr, path)
    assert not dciodvfy_errors(path)
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()  # the score alone, on the whole image
    assert group.get_qualitative_evaluations(name=OPACITY_CODE)[0].value == codes.SCT.Absent
    (rectangle,) = _coordinates(group.get_measurements(name=SCORE_CODE)[0])
    np.testing.assert_array_equal(rectangle.value, _rectangle(0, 0, int(source.Rows), int(source.Columns)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opacity_score": 1.5}, "opacity_score"),
        ({"opacity_score": float("nan")}, "opacity_score"),
        ({"threshold": -0.1}, "threshold"),
        ({"regions": [Region(Box(0, 0, 0, 10), 0.5, True)]}, "Region 1"),
        ({"regions": [Region(Box(0, 0, 10, 5000), 0.5, True)]}, "Region 1"),
        ({"regions": [Region(Box(0, 0, 10, 10), 1.2, True)]}, "region 1 mean probability"),
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


def test_tracking_uids_are_derived_so_a_rerun_writes_the_same_objects(dicom_dir):
    """SR groups and SEG segments carry Tracking UIDs derived from the case and the finding: a rerun
    gives identical content (the MAP image and the checkout are compared that way); another case or
    another finding gets a different UID."""
    from operators.lib.uids import tracking_uid

    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    mask = np.zeros((source.Rows, source.Columns), bool)
    mask[10:50, 10:50] = True

    def build(key):
        seg = build_binary_seg(source, mask, mask, ALGORITHM, source_key=key)
        sr = build_opacity_sr(source, seg, 0.7, True, 0.5, ALGORITHM, regions=[Region(Box(10, 10, 50, 50), 0.8, True)], source_key=key)
        sr_uids = [group.tracking_uid for group in hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()]
        seg_uids = [d.TrackingUID for d in seg.SegmentSequence]
        return seg_uids, sr_uids

    first, again, other = build("case-a"), build("case-a"), build("case-b")
    assert first == again
    assert len(set(first[0] + first[1])) == 4  # opacity and lung segments, score and region groups
    assert not set(first[0] + first[1]) & set(other[0] + other[1])
    assert first[0][0] == tracking_uid("case-a", ALGORITHM.version, ALGORITHM.preset, "Lung opacity")
