"""Secondary Capture output: the opacity heat map burned into a copy of the radiograph, for PACS viewers.

Most PACS viewers do not render a FRACTIONAL SEG over a projection radiograph, so the result is also
sent as an ordinary colour image in a new series of the source's study. That image is a picture of the
result, not a radiograph: it says **NOT FOR DIAGNOSTIC USE** in its pixels (a band of text added
above the picture, which no viewer setting can hide) and in its header (ImageComments, DerivationDescription,
BurnedInAnnotation ``YES``, "NOT FOR CLINICAL USE" in the series description), and it references the
radiograph it was made from (SourceImageSequence, purpose DCM 121322 "Source image for image
processing operation").

The patient and study attributes follow the copy rules of :mod:`operators.lib.seg_output` (same
helpers), so the SC, the SEGs and the SR of one image carry identical patient/study values.

PatientOrientation (type 2C, required here) is copied when the source has two valid values and
written empty otherwise; Laterality (type 2C) is written empty when the source has no
BodyPartExamined; the Image Pixel module is RGB, 8 bits, uncompressed (Explicit VR Little
Endian), so every viewer can show it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.enum import PatientOrientationValuesBiped
from PIL import Image, ImageDraw, ImageFont
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from operators.lib.seg_output import (
    AlgorithmInfo,
    series_description,
)
from operators.lib.source_header import drop_invalid_copied_values, prepare_source
from operators.lib.uids import case_key, result_uids

#: Text burned into every secondary capture, and written into its ImageComments.
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
#: Longest side of the rendered heat map (the writer passes this to ``render_preview``).
SC_MAX_SIDE_PX = 2048
#: Banner text height as a fraction of the image's shorter side (never below ``_MIN_TEXT_PX``).
TEXT_HEIGHT_FRACTION = 0.035
_MIN_TEXT_PX = 12
#: Colours of the text band: white text on black.
_TEXT_RGB = (255, 255, 255)
_BOX_RGB = (0, 0, 0)
#: Largest length of LO / ST values written here.
_LO_MAX = 64
_ST_MAX = 1024


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``size_px``; its fixed bitmap font where FreeType is absent."""
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


def burn_text(rgb: np.ndarray, lines: Sequence[str]) -> tuple[np.ndarray, int]:
    """Put lines of white text on a black band added above an RGB image.

    The band is added, not painted over the image, so no part of the picture is hidden. The text
    height is ``TEXT_HEIGHT_FRACTION`` of the image's shorter side, reduced until the longest line
    fits the width.

    Parameters
    ----------
    rgb : numpy.ndarray
        H×W×3 uint8 image; not modified.
    lines : sequence of str
        Text lines, drawn left-aligned; at least one.

    Returns
    -------
    tuple of (numpy.ndarray, int)
        The new (H + band)×W×3 uint8 image, and the band's height in rows (the image starts there).

    Raises
    ------
    ValueError
        When ``rgb`` is not H×W×3 uint8, or ``lines`` is empty.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an H×W×3 uint8 array, got {rgb.shape} {rgb.dtype}")
    if not lines:
        raise ValueError("burn_text needs at least one line of text")
    height, width = rgb.shape[:2]
    text = "\n".join(lines)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size_px = max(_MIN_TEXT_PX, round(TEXT_HEIGHT_FRACTION * min(height, width)))
    while True:
        font = _font(size_px)
        margin = max(2, size_px // 3)
        left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
        if right - left + 2 * margin <= width or size_px <= _MIN_TEXT_PX:
            break
        size_px -= 1
    band_height = bottom - top + 2 * margin
    canvas = Image.new("RGB", (width, band_height + height), _BOX_RGB)
    canvas.paste(Image.fromarray(rgb), (0, band_height))
    ImageDraw.Draw(canvas).multiline_text((margin - left, margin - top), text, fill=_TEXT_RGB, font=font)
    return np.asarray(canvas), band_height


def _patient_orientation(prepared: pydicom.Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation when it is two single-direction values highdicom accepts."""
    value = prepared.get("PatientOrientation")
    if not isinstance(value, MultiValue) or len(value) != 2:
        return None
    try:
        return tuple(PatientOrientationValuesBiped(v).value for v in value)  # type: ignore[return-value]
    except ValueError:
        return None


def build_heatmap_secondary_capture(
    source: pydicom.Dataset,
    rgb: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    caption: str | None = None,
    series_number: int = 9103,
    source_key: str | None = None,
) -> hd.sc.SCImage:
    """Build a Secondary Capture of the heat map with "NOT FOR DIAGNOSTIC USE" burned in.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the single-frame source radiograph (PixelData not needed).
    rgb : numpy.ndarray
        H×W×3 uint8 rendering of the radiograph with the heat map (e.g. ``render_preview(...,
        max_side_px=SC_MAX_SIDE_PX)``), without text; it may be smaller than the source but must
        keep its aspect ratio (within one pixel), since it is labelled with the source's orientation.
    algorithm : AlgorithmInfo
        Algorithm identity.
    caption : str or None, optional
        Last line of the text band, e.g. ``"opacity score 0.62 (positive), preset zones"``; also
        written into DerivationDescription, so what is burned in can be read back.
    series_number : int, optional
        Series Number of the new series.
    source_key : str, optional
        What the result UIDs are derived from (the case id); the source's SOP Instance UID by default.

    Returns
    -------
    highdicom.sc.SCImage
        RGB Secondary Capture (Modality OT) in the source's study, in a new series: the text band
        (see :func:`burn_text`) above ``rgb``.

    Raises
    ------
    ValueError
        When ``rgb`` is not H×W×3 uint8 or its aspect ratio differs from the source's.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an H×W×3 uint8 array, got {rgb.shape} {rgb.dtype}")
    rows, cols = int(source.Rows), int(source.Columns)
    scale = rgb.shape[0] / rows
    if abs(cols * scale - rgb.shape[1]) > 1.0:
        raise ValueError(f"rgb is {rgb.shape[0]}×{rgb.shape[1]}, which is not the source's {rows}×{cols} scaled; "
                         "render it from the source pixels without cropping")
    lines = [NOT_FOR_DIAGNOSTIC_USE, f"Lung opacity heat map - {algorithm.name} {algorithm.version} - research use only"]
    if caption:
        lines.append(caption)
    burned, _ = burn_text(rgb, lines)

    prepared = prepare_source(source)
    orientation = _patient_orientation(prepared)
    series_uid, instance_uid = result_uids(case_key(source, source_key), algorithm.version, algorithm.preset, "sc-heatmap")
    now = datetime.datetime.now()
    sc = hd.sc.SCImage(
        pixel_array=burned,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=prepared.StudyInstanceUID,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=f"{algorithm.name} MAP"[:_LO_MAX],
        patient_id=prepared.PatientID,
        patient_name=prepared.PatientName,
        patient_birth_date=prepared.PatientBirthDate,
        patient_sex=prepared.PatientSex,
        accession_number=prepared.AccessionNumber,
        study_id=prepared.StudyID,
        study_date=prepared.StudyDate,
        study_time=prepared.StudyTime,
        referring_physician_name=prepared.ReferringPhysicianName,
        # highdicom requires two values in PATIENT mode; an unknown orientation is written empty below.
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=prepared.get("SpecificCharacterSet"),
        series_description=series_description("Opacity heat map", algorithm.preset),
        series_date=now.date(),
        series_time=now.time(),
        content_date=now.date(),
        content_time=now.time(),
        manufacturer_model_name=algorithm.name[:_LO_MAX],
        software_versions=algorithm.version[:_LO_MAX],
    )
    sc.PatientOrientation = list(orientation) if orientation else ""
    # Made on a workstation from a stored image, not captured from a digital interface.
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = (f"{NOT_FOR_DIAGNOSTIC_USE}. Picture of a research algorithm's lung opacity "
                        "probability map; not a radiograph. Research use only.")
    sc.DerivationDescription = (
        f"{NOT_FOR_DIAGNOSTIC_USE}: opacity probability heat map and opacity mask outline blended onto "
        f"the source radiograph by {algorithm.name} {algorithm.version} (preset {algorithm.preset})"
        + (f". Burned-in caption: {caption}" if caption else "")
    )[:_ST_MAX]
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence = [reference]
    if prepared.get("BodyPartExamined"):
        sc.BodyPartExamined = prepared.BodyPartExamined
    else:
        # Laterality (General Series, type 2C) is required unless the body part is known to be
        # unpaired; with no BodyPartExamined it is written empty (unknown), never guessed.
        sc.Laterality = ""
    if prepared.get("LossyImageCompression") == "01":
        sc.LossyImageCompression = "01"  # derived from a lossy-compressed image: stays flagged
    drop_invalid_copied_values(sc, prepared)
    return sc
