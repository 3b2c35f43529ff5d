"""Heat-map Secondary Capture on real CR / DX / SC sources from shared/data/dicom.

Each SC is rendered from the source's decoded pixels (the app's own reader) and a synthetic
probability map, written, checked by dciodvfy (no "Error" line, only the warnings listed below) and
read back. Writing validation is strict, as in test_seg_output.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from operators.lib.dicom_input import load_cxr
from operators.lib.preview import render_preview
from operators.lib.sc_output import (
    NOT_FOR_DIAGNOSTIC_USE,
    SC_MAX_SIDE_PX,
    build_heatmap_secondary_capture,
    burn_text,
)
from operators.lib.seg_output import AlgorithmInfo
from operators.lib.atomic_file import write_dicom_atomically
from tests.support.dicom_checks import ALLOWED_WARNINGS as SEG_ALLOWED_WARNINGS
from tests.support.dicom_checks import SOURCES as SEG_SOURCES
from tests.support.dicom_checks import dciodvfy_lines

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")

ALGORITHM = AlgorithmInfo(name="cxr-lung-opacity", version="0.1.0", preset="zones")
#: One source of each kind (JPEG CR in an SC SOP class, uncompressed MONOCHROME1 CR, DX secondary capture).
SOURCES = {key: SEG_SOURCES[key] for key in ("rsna-0004", "nema-rg1-uncr", "nih-dx-sc")}
#: Accepted dciodvfy warnings: the source's own patient/study values (as for the SEGs), and the
#: empty Laterality written when the source has no BodyPartExamined (the NIH file).
ALLOWED_WARNINGS = (
    *SEG_ALLOWED_WARNINGS,
    re.compile(r"only permitted to be empty when actually unknown.* - attribute <Laterality>$"),
)


@dataclass
class Built:
    source: pydicom.Dataset
    rgb: np.ndarray
    path: Path


@pytest.fixture(scope="module", params=sorted(SOURCES))
def built(request, dicom_dir, tmp_path_factory) -> Built:
    path = next(dicom_dir.glob(SOURCES[request.param]))
    case = load_cxr(path, request.param)
    rows, cols = case.pixels.shape
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    prob = np.clip(1.0 - np.hypot(yy / rows - 0.5, xx / cols - 0.3) * 3.0, 0.0, 1.0).astype(np.float32)
    rgb = np.asarray(render_preview(case.pixels, prob, prob > 0.5, max_side_px=SC_MAX_SIDE_PX))
    sc = build_heatmap_secondary_capture(case.dataset, rgb, ALGORITHM, caption="opacity score 0.62 (positive)")
    out = tmp_path_factory.mktemp(request.param) / "sc_heatmap.dcm"
    write_dicom_atomically(sc, out)
    return Built(case.dataset, rgb, out)


def test_sc_dciodvfy_finds_no_error(built, dciodvfy):
    lines = dciodvfy_lines(dciodvfy, built.path)
    assert not [line for line in lines if "Error" in line], "\n".join(lines)
    unexpected = [w for w in lines if w.startswith("Warning") and not any(p.search(w) for p in ALLOWED_WARNINGS)]
    assert not unexpected, "\n".join(unexpected)


def test_sc_header_says_not_for_diagnostic_use_and_references_source(built):
    sc = pydicom.dcmread(built.path)
    source = built.source
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert int(sc.SeriesNumber) == 9103
    assert sc.PatientID == source.get("PatientID", "")
    assert sc.BurnedInAnnotation == "YES"
    assert NOT_FOR_DIAGNOSTIC_USE in sc.ImageComments
    assert NOT_FOR_DIAGNOSTIC_USE in sc.DerivationDescription
    assert sc.SeriesDescription.endswith("NOT FOR CLINICAL USE")
    assert sc.ConversionType == "WSD"
    ref = sc.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert "PatientAge" not in sc or sc.PatientAge != "51"  # RSNA's invalid AS is not copied


def test_sc_pixels_are_the_rendering_below_a_text_band(built):
    sc = pydicom.dcmread(built.path)
    assert sc.PhotometricInterpretation == "RGB" and int(sc.SamplesPerPixel) == 3
    pixels = sc.pixel_array
    height, width = built.rgb.shape[:2]
    band = pixels.shape[0] - height
    assert pixels.shape == (band + height, width, 3)
    assert band >= 2 * 12  # at least two lines of the smallest text
    np.testing.assert_array_equal(pixels[band:], built.rgb)  # nothing of the picture is hidden
    text = pixels[:band]
    assert (text == 255).all(axis=-1).sum() > 50  # white text on
    assert (text == 0).all(axis=-1).mean() > 0.5  # a black band


def test_sc_keeps_orientation_and_lossy_flag(dicom_dir):
    nema = load_cxr(dicom_dir / "misc" / "nema_wg04_RG1_UNCR.dcm", "nema")
    rgb = np.zeros((*nema.pixels.shape, 3), np.uint8)
    sc = build_heatmap_secondary_capture(nema.dataset, rgb, ALGORITHM)
    assert list(sc.PatientOrientation) == ["L", "F"]
    rsna = load_cxr(next(dicom_dir.glob("rsna/0004cfab-*.dcm")), "rsna")
    sc = build_heatmap_secondary_capture(rsna.dataset, np.zeros((512, 512, 3), np.uint8), ALGORITHM)
    assert sc.PatientOrientation == "" and sc.LossyImageCompression == "01"  # JPEG baseline source


def test_burn_text_fits_long_lines_into_narrow_images():
    image, band = burn_text(np.zeros((300, 200, 3), np.uint8), ["x" * 200, NOT_FOR_DIAGNOSTIC_USE])
    assert image.shape[1] == 200 and band > 0 and image.shape[0] == 300 + band


@pytest.mark.parametrize(
    "rgb, match",
    [
        (np.zeros((1024, 1024), np.uint8), "H×W×3 uint8"),
        (np.zeros((1024, 1024, 3), np.float32), "H×W×3 uint8"),
        (np.zeros((1024, 512, 3), np.uint8), "not the source's"),
    ],
)
def test_sc_input_is_checked(dicom_dir, rgb, match):
    source = pydicom.dcmread(next(dicom_dir.glob("misc/nih_*.dcm")), stop_before_pixels=True)
    with pytest.raises(ValueError, match=match):
        build_heatmap_secondary_capture(source, rgb, ALGORITHM)
