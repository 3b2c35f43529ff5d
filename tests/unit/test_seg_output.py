"""DICOM SEG output on the real single-frame CR / DX / SC files in shared/data/dicom.

Every SEG is written, checked by dciodvfy (no "Error" line, only known warnings that come from the
source's own patient/study data) and read back with highdicom.

pydicom's *writing* validation is strict for these tests (so every value we set is checked).
*Reading* validation stays at its default: strict reading refuses the RSNA files, whose
PixelSpacing is a 19-character DS ("0.14300000000000002", the limit is 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import config

from operators.lib.atomic_file import write_dicom_atomically
from operators.lib.seg_output import AlgorithmInfo, build_band_seg, build_binary_seg, build_probability_seg, series_description
from operators.lib.source_header import usable_pixel_spacing
from tests.support.dicom_checks import ALLOWED_WARNINGS, SOURCES, dciodvfy_lines, read_header

# highdicom warns about single-component patient names (RSNA, NIH); the value is the source's own.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")

ALGORITHM = AlgorithmInfo(name="cxr-lung-opacity", version="0.1.0", preset="balanced")

def synthetic_maps(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probability map (0, 1 and many fractions), opacity mask (p > 0.5), lung mask (two ellipses)."""
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    prob = np.clip(1.0 - np.hypot((yy - 0.5 * rows) / rows, (xx - 0.3 * cols) / cols) * 3.0, 0.0, 1.0)
    prob = prob.astype(np.float32)
    lung = (((yy - 0.5 * rows) / (0.3 * rows)) ** 2 + ((xx - 0.3 * cols) / (0.15 * cols)) ** 2 < 1) | (
        ((yy - 0.5 * rows) / (0.3 * rows)) ** 2 + ((xx - 0.7 * cols) / (0.15 * cols)) ** 2 < 1
    )
    return prob, prob > 0.5, lung


@dataclass
class Built:
    source: pydicom.Dataset
    prob: np.ndarray
    opacity: np.ndarray
    lung: np.ndarray
    files: dict[str, Path]


@pytest.fixture(scope="module", params=sorted(SOURCES))
def built(request, dicom_dir, tmp_path_factory) -> Built:
    """Build and write the SEGs of one source: probability, binary, binary empty, binary no lung."""
    matches = sorted(dicom_dir.glob(SOURCES[request.param]))
    assert len(matches) == 1, f"{SOURCES[request.param]} matches {matches}"
    source = read_header(matches[0])
    prob, opacity, lung = synthetic_maps(int(source.Rows), int(source.Columns))
    empty = np.zeros_like(opacity)
    segs = {
        "probability": build_probability_seg(source, prob, ALGORITHM),
        "binary": build_binary_seg(source, opacity, lung, ALGORITHM),
        "binary-empty": build_binary_seg(source, empty, empty, ALGORITHM),
        "binary-no-lung": build_binary_seg(source, empty, None, ALGORITHM),
        "bands": build_band_seg(source, prob, ALGORITHM),
    }
    folder = tmp_path_factory.mktemp(request.param)
    files = {}
    for kind, seg in segs.items():
        files[kind] = folder / f"{kind}.dcm"
        write_dicom_atomically(seg, files[kind])
    return Built(source, prob, opacity, lung, files)


@pytest.mark.parametrize("kind", ["probability", "binary", "binary-empty", "binary-no-lung", "bands"])
def test_dciodvfy_finds_no_error(built, kind, dciodvfy):
    lines = dciodvfy_lines(dciodvfy, built.files[kind])
    errors = [line for line in lines if "Error" in line]
    assert not errors, "\n".join(lines)
    warnings = [line for line in lines if line.startswith("Warning")]
    unexpected = [w for w in warnings if not any(p.search(w) for p in ALLOWED_WARNINGS)]
    assert not unexpected, "\n".join(unexpected)


def check_common(seg: hd.seg.Segmentation, source: pydicom.Dataset, series_number: int) -> None:
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SOPInstanceUID != source.SOPInstanceUID
    assert seg.PatientID == source.get("PatientID", "")
    assert seg.Modality == "SEG"
    assert int(seg.SeriesNumber) == series_number
    assert int(seg.InstanceNumber) == 1
    assert seg.ContentLabel == "OPACITY"
    assert seg.Manufacturer == "cxr-lung-opacity MAP"
    assert seg.SoftwareVersions == "0.1.0"
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
    assert ALGORITHM.preset in seg.SeriesDescription
    assert len(seg.SeriesDescription) <= 64
    assert seg.get_source_image_uids() == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
    ]
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    check_geometry(seg, source)
    assert seg.ContentCreatorName == f"{ALGORITHM.name}^{ALGORITHM.version}"
    segment = seg.get_segment_description(1)
    assert segment.segmented_property_type == hd.sr.CodedConcept("112001", "DCM", "Opacity")
    assert segment.segmented_property_category.value == "49755003"
    assert segment.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    algorithm = segment.algorithm_identification[0]
    assert algorithm.AlgorithmName == ALGORITHM.name
    assert algorithm.AlgorithmVersion == ALGORITHM.version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"


def check_geometry(seg: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """The nominal image-plane geometry OHIF and dcmqi need: frame of reference, orientation, position, spacing."""
    from operators.lib.uids import frame_of_reference_uid

    assert seg.FrameOfReferenceUID == frame_of_reference_uid(str(source.SOPInstanceUID))
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    measures = shared.PixelMeasuresSequence[0]
    expected = [float(v) for v in source.PixelSpacing] if usable_pixel_spacing(source) else [1.0, 1.0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(expected)
    assert float(measures.SliceThickness) == 1.0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]


def pixels(seg: hd.seg.Segmentation, source: pydicom.Dataset, segments: list[int]) -> np.ndarray:
    array = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID],
        segment_numbers=segments,
        rescale_fractional=True,
    )
    return array[0]


def test_probability_seg_round_trips(built):
    seg = hd.seg.segread(built.files["probability"])
    check_common(seg, built.source, 9101)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert seg.segmentation_fractional_type == hd.seg.SegmentationFractionalTypeValues.PROBABILITY
    assert int(seg.MaximumFractionalValue) == 255
    assert seg.number_of_segments == 1
    assert int(seg.NumberOfFrames) == 1
    values = pixels(seg, built.source, [1])[..., 0]
    assert values.shape == built.prob.shape
    assert np.abs(values - built.prob).max() <= 1 / 255


def test_binary_seg_round_trips(built):
    seg = hd.seg.segread(built.files["binary"])
    check_common(seg, built.source, 9102)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.number_of_segments == 2
    lung = seg.get_segment_description(2)
    assert lung.segment_label == "Lung"
    assert lung.segmented_property_type.value == "39607008"
    assert lung.segmented_property_category.value == "91723000"
    values = pixels(seg, built.source, [1, 2])
    np.testing.assert_array_equal(values[..., 0].astype(bool), built.opacity)
    np.testing.assert_array_equal(values[..., 1].astype(bool), built.lung)
    colours = [hd.color.CIELabColor.from_dicom_value(seg.get_segment_description(n).RecommendedDisplayCIELabValue).to_rgb()
               for n in (1, 2)]
    assert colours[0][0] > 200 > colours[0][1] and colours[1][1] > 150 > colours[1][0]  # Opacity red, Lung green


def test_band_seg_round_trips(built):
    seg = hd.seg.segread(built.files["bands"])
    check_common(seg, built.source, 9105)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == [
        "Opacity p 0.50-0.75", "Opacity p 0.75-0.90", "Opacity p >= 0.90"]
    values = pixels(seg, built.source, [1, 2, 3]).astype(bool)
    prob = built.prob
    np.testing.assert_array_equal(values[..., 0], (prob >= 0.5) & (prob < 0.75))
    np.testing.assert_array_equal(values[..., 1], (prob >= 0.75) & (prob < 0.9))
    np.testing.assert_array_equal(values[..., 2], prob >= 0.9)
    assert values.sum(axis=-1).max() <= 1  # exclusive: a labelmap viewer paints each pixel once


def test_band_seg_of_a_negative_study_keeps_a_frame_per_band(built, tmp_path):
    """The bands go to highdicom as a label map; with no pixel in any band each band still has its frame."""
    from operators.lib.seg_output import band_labels

    path = tmp_path / "bands_empty.dcm"
    build_band_seg(built.source, np.zeros_like(built.prob), ALGORITHM).save_as(path, enforce_file_format=True)
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 3 == int(seg.NumberOfFrames) and seg.SegmentsOverlap == "NO"
    assert not pixels(seg, built.source, [1, 2, 3]).any()
    labels = band_labels(np.array([[0.0, 0.5, 0.74], [0.75, 0.9, 1.0]], np.float32))
    np.testing.assert_array_equal(labels, [[0, 1, 1], [2, 3, 3]])


@pytest.mark.parametrize("kind, segments", [("binary-empty", 2), ("binary-no-lung", 1)])
def test_empty_masks_keep_one_frame_per_segment(built, kind, segments):
    seg = hd.seg.segread(built.files[kind])
    check_common(seg, built.source, 9102)
    assert seg.number_of_segments == segments
    assert int(seg.NumberOfFrames) == segments
    values = pixels(seg, built.source, list(range(1, segments + 1)))
    assert values.shape == (*built.opacity.shape, segments)
    assert not values.any()


def test_patient_orientation_copied_and_geometry_described(built):
    seg = pydicom.dcmread(built.files["probability"], stop_before_pixels=True)
    source_orientation = list(built.source.get("PatientOrientation") or [])
    assert "PatientOrientation" in seg
    assert list(seg.PatientOrientation or []) == source_orientation
    assert seg.DerivationDescription.startswith("Nominal image-plane geometry")


def test_source_header_is_not_modified(dicom_dir):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    before = source.to_json_dict()
    prob, opacity, lung = synthetic_maps(int(source.Rows), int(source.Columns))
    build_probability_seg(source, prob, ALGORITHM)
    build_binary_seg(source, opacity, lung, ALGORITHM)
    assert source.to_json_dict() == before
    assert "StudyDate" not in source  # filled in on the copy only


def test_pixel_data_may_be_present(dicom_dir):
    source = pydicom.dcmread(next(dicom_dir.glob("rsna/0004cfab-*.dcm")))
    prob, opacity, _ = synthetic_maps(int(source.Rows), int(source.Columns))
    seg = build_binary_seg(source, opacity, None, ALGORITHM)
    assert seg.StudyInstanceUID == source.StudyInstanceUID


def test_nema_spacing_zero_falls_back_to_nominal_and_orientation_copied(dicom_dir):
    source = read_header(dicom_dir / "misc" / "nema_wg04_RG1_UNCR.dcm")
    assert [float(v) for v in source.PixelSpacing] == [0.0, 0.0] and "ImagerPixelSpacing" not in source
    assert source.PhotometricInterpretation == "MONOCHROME1"
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    assert [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing] == [1.0, 1.0]
    assert "nominal pixel spacing of 1 mm" in seg.DerivationDescription
    assert list(seg.PatientOrientation) == ["L", "F"]
    assert seg.PhotometricInterpretation == "MONOCHROME2"  # SEG pixels, not the source's


def test_rsna_invalid_patient_age_is_dropped(dicom_dir):
    source = read_header(next(dicom_dir.glob("rsna/0004cfab-*.dcm")))
    assert source.PatientAge == "51"  # invalid AS ("051Y" would be valid)
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    assert "PatientAge" not in seg

    source.PatientAge = "051Y"
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    assert seg.PatientAge == "051Y"


def test_imager_pixel_spacing_only_and_stray_frame_of_reference(dicom_dir, tmp_path, dciodvfy):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    source.ImagerPixelSpacing = [0.2, 0.25]
    stray = hd.UID()
    source.FrameOfReferenceUID = stray
    prob, _, _ = synthetic_maps(int(source.Rows), int(source.Columns))
    seg = build_probability_seg(source, prob, ALGORITHM)
    assert [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing] == [0.2, 0.25]
    assert "ImagerPixelSpacing (at the detector plane" in seg.DerivationDescription
    assert seg.FrameOfReferenceUID != stray  # the source's own frame is never passed on
    path = tmp_path / "seg.dcm"
    write_dicom_atomically(seg, path)
    assert not [line for line in dciodvfy_lines(dciodvfy, path) if "Error" in line]


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
def test_messy_patient_study_values_are_emptied_not_fatal(dicom_dir, tmp_path, dciodvfy):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    before = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # let the test plant invalid values
    try:
        source.PatientSex = "Male"
        source.StudyDate = "2020-01-01"
        source.PatientBirthDate = "unknown"
        source.PatientOrientation = "L"  # VM 1: malformed
    finally:
        config.settings.writing_validation_mode = before
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    assert seg.PatientSex == "" and seg.StudyDate == "" and seg.PatientBirthDate == ""
    assert seg.PatientOrientation == ""
    path = tmp_path / "seg.dcm"
    write_dicom_atomically(seg, path)
    assert not [line for line in dciodvfy_lines(dciodvfy, path) if "Error" in line]


def test_result_uids_are_derived_from_the_case_version_and_preset(dicom_dir):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    empty = np.zeros((source.Rows, source.Columns), bool)
    first, again = build_binary_seg(source, empty, None, ALGORITHM), build_binary_seg(source, empty, None, ALGORITHM)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    other_preset = build_binary_seg(source, empty, None, AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, "weighted"))
    other_case = build_binary_seg(source, empty, None, ALGORITHM, source_key=f"{source.SOPInstanceUID}_2")
    probability = build_probability_seg(source, empty.astype(np.float32), ALGORITHM)
    uids = {seg.SOPInstanceUID for seg in (first, other_preset, other_case, probability)}
    assert len(uids) == 4


@pytest.mark.parametrize(
    "value, expected",
    [
        ([0.143, 0.143], [0.143, 0.143]),
        ([0.1, 0.2], [0.1, 0.2]),
        ([0, 0], None),
        ([0.1, 0], None),
        ([-0.1, 0.1], None),
        ([0.1], None),
        (None, None),
    ],
)
def test_usable_pixel_spacing(value, expected):
    ds = pydicom.Dataset()
    if value is not None:
        ds.PixelSpacing = value
    assert usable_pixel_spacing(ds) == expected


def test_series_description_keeps_marker_within_64_chars():
    text = series_description("Opacity probability", "a-very-long-preset-name-" * 5)
    assert len(text) <= 64
    assert text.endswith("NOT FOR CLINICAL USE")
    assert "[a-very-long" in text


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.float32),  # wrong shape
        np.full((1024, 1024), 1.5, np.float32),  # above 1
        np.full((1024, 1024), np.nan, np.float32),  # NaN
        np.zeros((1024, 1024), np.uint8),  # not float
    ],
)
def test_probability_input_is_checked(dicom_dir, bad):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    with pytest.raises(ValueError):
        build_probability_seg(source, bad, ALGORITHM)


def test_binary_mask_shape_is_checked(dicom_dir):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    good = np.zeros((source.Rows, source.Columns), bool)
    with pytest.raises(ValueError):
        build_binary_seg(source, good, good[:-1], ALGORITHM)


def test_write_atomically_replaces_and_leaves_nothing_behind(dicom_dir, tmp_path):
    source = read_header(next(dicom_dir.glob("misc/nih_*.dcm")))
    seg = build_binary_seg(source, np.zeros((source.Rows, source.Columns), bool), None, ALGORITHM)
    path = tmp_path / "out.dcm"
    path.write_bytes(b"old")
    write_dicom_atomically(seg, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dcm"]
    assert pydicom.dcmread(path).SOPInstanceUID == seg.SOPInstanceUID
    assert path.stat().st_mode & 0o777 == 0o644

    broken = pydicom.Dataset()  # no file meta, no SOP class: save_as refuses
    broken.PatientID = "x"
    with pytest.raises(Exception):
        write_dicom_atomically(broken, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dcm"]
    assert pydicom.dcmread(path).SOPInstanceUID == seg.SOPInstanceUID
