"""DICOM SEG output for a single-frame chest radiograph, built with highdicom.

The sources are CR, DX or Secondary Capture images. None of them has a Frame of Reference UID, so
highdicom builds the SEG in its no-frame-of-reference mode: one frame per segment, pixel-for-pixel
aligned with the source, no Plane Position / Plane Orientation functional groups.

Rules for what is copied from the source header (all applied to a private copy; the caller's
dataset is never modified):

* Patient and study modules: copied by highdicom. Type 2 attributes that highdicom reads with plain
  attribute access (PatientID, PatientName, PatientBirthDate, PatientSex, AccessionNumber, StudyID,
  StudyDate, StudyTime) are added empty when the source lacks them (e.g. NIH secondary captures),
  since highdicom would otherwise raise ``AttributeError``; they (and ReferringPhysicianName) are
  emptied when their value is one highdicom refuses (PatientSex ``"Male"``, a date ``"2020-01-01"``).
* PatientOrientation: copied when the source has two values; otherwise written empty
  (type 2C in the General Image module, required here because the SEG has no Plane Orientation).
* Pixel spacing: by default the SEG has **no** Pixel Measures functional group
  (:data:`PIXEL_MEASURES_FROM_SOURCE` is False). The SEG IOD only requires Pixel Measures when a
  Frame of Reference is present, and the SEG is pixel-for-pixel aligned with the source it
  references, so a reader gets the spacing from there. Reason: highdicom 0.28.2 writes Pixel
  Measures for a no-frame-of-reference source as PixelSpacing alone (valid: Slice Thickness is 1C,
  needed only with a Frame of Reference), but its own reader (``segread``) refuses a Pixel Measures
  item without SliceThickness, and a projection radiograph has no slice thickness to invent.
  When the flag is True, the source's PixelSpacing is passed on only if
  :func:`usable_pixel_spacing` accepts it: exactly two finite values > 0, re-encoded within the
  16-character DS limit; absent, ``[0, 0]``, negative, NaN or wrong multiplicity is dropped.
  ImagerPixelSpacing is never used: it is measured at the detector plane, not in the patient,
  which is what the Pixel Measures macro means.
* FrameOfReferenceUID, PositionReferenceIndicator, ImageOrientationPatient, ImagePositionPatient,
  SliceThickness, SpacingBetweenSlices: removed from the copy, so a stray value cannot switch
  highdicom to its 3D mode (which needs plane positions a projection does not have).
* Copied patient/study values that break their VR (RSNA's PatientAge ``"51"``) are removed
  (type 3) or emptied (type 2); nothing is guessed.
* All frames are kept (``omit_empty_frames=False``), so an empty mask (a negative study) still gives
  one frame per segment and every described segment has pixel data.
"""

from __future__ import annotations

import copy
import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.seg import (
    Segmentation,
    SegmentAlgorithmTypeValues,
    SegmentationFractionalTypeValues,
    SegmentationTypeValues,
    SegmentDescription,
)
from pydicom import config
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM, format_number_as_ds, validate_value

from operators.lib.atomic_file import write_atomically

#: Segmented property type of the opacity segment (DCM 112001 "Opacity").
OPACITY_CODE: Code = codes.DCM.Opacity
#: Category of the opacity segment (SCT 49755003, "Morphologically Abnormal Structure", formerly
#: "Morphologically Altered Structure").
OPACITY_CATEGORY_CODE: Code = codes.SCT.MorphologicallyAbnormalStructure
#: Segmented property type of the lung segment (SCT 39607008 "Lung").
LUNG_CODE: Code = codes.SCT.Lung
#: Category of the lung segment (SCT 91723000 "Anatomical Structure").
LUNG_CATEGORY_CODE: Code = codes.SCT.AnatomicalStructure
#: Algorithm family recorded in the Algorithm Identification Sequence.
ALGORITHM_FAMILY_CODE: Code = codes.cid7162.ArtificialIntelligence

#: Pass a valid source PixelSpacing on as Pixel Measures (see the module docstring for why not).
PIXEL_MEASURES_FROM_SOURCE = False

#: Content Label (CS, at most 16 characters) of both SEG objects.
CONTENT_LABEL = "OPACITY"
#: Marker every series description carries.
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
#: Largest length of a LO value (SeriesDescription, Manufacturer, ...).
_LO_MAX = 64
#: Denominator of the fractional encoding.
MAX_FRACTIONAL_VALUE = 255

#: Type 2 attributes highdicom's Segmentation reads with plain attribute access from the source.
_TYPE2_SOURCE_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
#: More type 2 attributes that may come from the source (emptied, never removed, when invalid).
_TYPE2_OTHERS = frozenset({"ReferringPhysicianName", "PatientOrientation"})
#: Attributes left alone even when their value is invalid (removing them would break the object).
_NEVER_DROPPED = frozenset({"StudyInstanceUID", "SpecificCharacterSet"})
#: Removed from the source copy, so highdicom always uses its no-frame-of-reference mode.
_SPATIAL_ATTRIBUTES = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
)
#: Text VRs whose copied values are checked.
_CHECKED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identity of the algorithm that produced a segmentation.

    Attributes
    ----------
    name : str
        Algorithm name, e.g. ``"cxr-lung-opacity"``.
    version : str
        App version.
    preset : str
        Preset name; goes into the series description and the algorithm parameters.
    """

    name: str
    version: str
    preset: str


def usable_pixel_spacing(source: pydicom.Dataset) -> list[float] | None:
    """Return the source's PixelSpacing if it is usable, else None.

    Parameters
    ----------
    source : pydicom.Dataset
        Source image header.

    Returns
    -------
    list of float or None
        ``[row_spacing, column_spacing]`` in mm when PixelSpacing holds exactly two finite values
        > 0; None otherwise (absent, empty, ``[0, 0]``, negative, NaN, wrong multiplicity).
    """
    value = source.get("PixelSpacing")
    if value is None:
        return None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values


def series_description(kind: str, preset: str) -> str:
    """Build a series description of at most 64 characters.

    Parameters
    ----------
    kind : str
        What the series holds, e.g. ``"Opacity probability"``.
    preset : str
        Preset name; shortened first when the description would be too long.

    Returns
    -------
    str
        ``"<kind> [<preset>] NOT FOR CLINICAL USE"``; the marker is never cut.
    """
    fixed = f"{kind} [] {NOT_FOR_CLINICAL_USE}"
    room = _LO_MAX - len(fixed)
    if room <= 0:
        return f"{kind[: _LO_MAX - len(NOT_FOR_CLINICAL_USE) - 1]} {NOT_FOR_CLINICAL_USE}"
    return f"{kind} [{preset[:room]}] {NOT_FOR_CLINICAL_USE}"


def _prepare_source(source: pydicom.Dataset) -> pydicom.Dataset:
    """Copy the source header (without pixels) and apply the module's copy rules."""
    prepared = pydicom.Dataset()
    for tag in source.keys():
        if tag.group == 0x7FE0:  # Pixel Data, Float Pixel Data, ...: never touched, never copied
            continue
        prepared.add(copy.deepcopy(source[tag]))
    for keyword in (*_TYPE2_SOURCE_ATTRIBUTES, "ReferringPhysicianName"):
        if keyword not in prepared or prepared[keyword].value is None:
            setattr(prepared, keyword, "")
        elif not _acceptable_to_highdicom(prepared[keyword]):
            prepared[keyword].value = ""
    spacing = usable_pixel_spacing(source) if PIXEL_MEASURES_FROM_SOURCE else None
    if spacing is None:
        if "PixelSpacing" in prepared:
            del prepared.PixelSpacing
    else:
        prepared.PixelSpacing = [format_number_as_ds(float(f"{v:.12g}")) for v in spacing]
    for keyword in _SPATIAL_ATTRIBUTES:
        # A projection radiograph cannot be placed in a patient frame of reference; a stray
        # FrameOfReferenceUID would switch highdicom to its 3D mode, which needs plane positions.
        if keyword in prepared:
            delattr(prepared, keyword)
    return prepared


def _acceptable_to_highdicom(element: pydicom.DataElement) -> bool:
    """Whether highdicom's SOPClass constructor takes this patient/study value without raising.

    It parses PatientSex into an enum (M, F, O) and dates/times into DA/TM; a value it would refuse
    (``"Male"``, ``"2020-01-01"``) is also invalid DICOM, so it is emptied (type 2).
    """
    value = element.value
    if value in ("", None):
        return True
    try:
        validate_value(element.VR, str(value), config.RAISE)
        if element.keyword == "PatientSex":
            return value in ("M", "F", "O")
        if element.VR == "DA":
            DA(value)
        elif element.VR == "TM":
            TM(value)
    except (ValueError, TypeError):
        return False
    return True


def _check_frame_shape(source: pydicom.Dataset, array: np.ndarray, what: str) -> None:
    """Raise ValueError unless ``array`` is 2D with the source's Rows × Columns."""
    expected = (int(source.Rows), int(source.Columns))
    if array.ndim != 2 or tuple(array.shape) != expected:
        raise ValueError(f"{what} has shape {array.shape}, source is {expected} (Rows × Columns)")


def _algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=ALGORITHM_FAMILY_CODE,
        version=algorithm.version,
        parameters={"preset": algorithm.preset},
    )


def _opacity_description(algorithm: AlgorithmInfo) -> SegmentDescription:
    return SegmentDescription(
        segment_number=1,
        segment_label="Opacity",
        segmented_property_category=OPACITY_CATEGORY_CODE,
        segmented_property_type=OPACITY_CODE,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_identification(algorithm),
        tracking_uid=hd.UID(),
        tracking_id="Lung opacity",
        anatomic_regions=[LUNG_CODE],
    )


def _lung_description(algorithm: AlgorithmInfo) -> SegmentDescription:
    return SegmentDescription(
        segment_number=2,
        segment_label="Lung",
        segmented_property_category=LUNG_CATEGORY_CODE,
        segmented_property_type=LUNG_CODE,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_identification(algorithm),
        tracking_uid=hd.UID(),
        tracking_id="Lung field",
    )


def _build(
    source: pydicom.Dataset,
    pixel_array: np.ndarray,
    segmentation_type: SegmentationTypeValues,
    descriptions: list[SegmentDescription],
    algorithm: AlgorithmInfo,
    kind: str,
    content_description: str,
    series_number: int,
) -> Segmentation:
    prepared = _prepare_source(source)
    now = datetime.datetime.now()
    seg = Segmentation(
        source_images=[prepared],
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=f"{algorithm.name} MAP"[:_LO_MAX],
        manufacturer_model_name=algorithm.name[:_LO_MAX],
        software_versions=algorithm.version[:_LO_MAX],
        # Software has no serial number, but highdicom (Enhanced General Equipment) requires one.
        device_serial_number=algorithm.version[:_LO_MAX],
        fractional_type=(
            SegmentationFractionalTypeValues.PROBABILITY
            if segmentation_type == SegmentationTypeValues.FRACTIONAL
            else None
        ),
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        content_description=content_description,
        content_label=CONTENT_LABEL,
        omit_empty_frames=False,
        series_description=series_description(kind, algorithm.preset),
        series_date=now.date(),
        series_time=now.time(),
        content_date=now.date(),
        content_time=now.time(),
    )
    orientation = prepared.get("PatientOrientation")
    # Two values (row, column direction) or empty; a malformed source value is not passed on.
    if isinstance(orientation, MultiValue) and len(orientation) == 2:
        seg.PatientOrientation = list(orientation)
    else:
        seg.PatientOrientation = ""
    _drop_invalid_copied_values(seg, prepared)
    return seg


def _drop_invalid_copied_values(seg: Segmentation, prepared: pydicom.Dataset) -> None:
    """Remove values copied from the source that break their VR (e.g. PatientAge ``"51"``).

    Only top-level elements whose value equals the source's are looked at (the patient and study
    attributes highdicom copied). A type 2 attribute is emptied, any other is removed; nothing is
    guessed (``"51"`` is not rewritten to ``"051Y"``).
    """
    for element in list(seg):
        if element.VR not in _CHECKED_VRS or element.tag not in prepared:
            continue
        if element.value != prepared[element.tag].value or element.keyword in _NEVER_DROPPED:
            continue
        values = element.value if element.VM > 1 else [element.value]
        try:
            for value in values:
                validate_value(element.VR, str(value), config.RAISE)
        except ValueError:
            if element.keyword in _TYPE2_SOURCE_ATTRIBUTES or element.keyword in _TYPE2_OTHERS:
                seg[element.tag].value = ""
            else:
                del seg[element.tag]


def build_probability_seg(
    source: pydicom.Dataset,
    prob_map: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = 9101,
) -> Segmentation:
    """Build a FRACTIONAL (PROBABILITY) SEG with one segment, Opacity.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the single-frame source radiograph (PixelData not needed).
    prob_map : numpy.ndarray
        Float H×W opacity probability in [0, 1], exactly the source's Rows × Columns.
    algorithm : AlgorithmInfo
        Algorithm identity.
    series_number : int, optional
        Series Number of the new series.

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG, in the source's study, in a new series; values stored as round(p × 255).

    Raises
    ------
    ValueError
        When the shape does not match the source or values are not finite or outside [0, 1].
    """
    prob_map = np.asarray(prob_map)
    _check_frame_shape(source, prob_map, "prob_map")
    if not np.issubdtype(prob_map.dtype, np.floating):
        raise ValueError(f"prob_map must be floating point, got {prob_map.dtype}")
    if not np.all(np.isfinite(prob_map)):
        raise ValueError("prob_map has NaN or infinite values")
    if prob_map.size and (prob_map.min() < 0.0 or prob_map.max() > 1.0):
        raise ValueError(
            f"prob_map values must lie in [0, 1], got [{prob_map.min()}, {prob_map.max()}]"
        )
    # Stacked-segments layout (frames, rows, columns, segments): highdicom reads a float 2D array
    # the same way, but the explicit form leaves no doubt that this is one segment.
    pixel_array = prob_map.astype(np.float32, copy=False)[np.newaxis, :, :, np.newaxis]
    return _build(
        source,
        pixel_array,
        SegmentationTypeValues.FRACTIONAL,
        [_opacity_description(algorithm)],
        algorithm,
        kind="Opacity probability",
        content_description="Lung opacity probability",
        series_number=series_number,
    )


def build_binary_seg(
    source: pydicom.Dataset,
    opacity_mask: np.ndarray,
    lung_mask: np.ndarray | None,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = 9102,
) -> Segmentation:
    """Build a BINARY SEG: segment 1 Opacity, segment 2 Lung when ``lung_mask`` is given.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the single-frame source radiograph (PixelData not needed).
    opacity_mask : numpy.ndarray
        Bool H×W opacity mask, exactly the source's Rows × Columns; may be all False.
    lung_mask : numpy.ndarray or None
        Bool H×W lung mask, same shape; may be all False. None: no Lung segment.
    algorithm : AlgorithmInfo
        Algorithm identity.
    series_number : int, optional
        Series Number of the new series.

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG, in the source's study, in a new series, one frame per segment (empty ones kept).

    Raises
    ------
    ValueError
        When a mask's shape does not match the source.
    """
    masks = [np.asarray(opacity_mask)]
    descriptions = [_opacity_description(algorithm)]
    if lung_mask is not None:
        masks.append(np.asarray(lung_mask))
        descriptions.append(_lung_description(algorithm))
    for name, mask in zip(("opacity_mask", "lung_mask"), masks):
        _check_frame_shape(source, mask, name)
    pixel_array = np.stack([mask.astype(bool) for mask in masks], axis=-1)
    pixel_array = pixel_array[np.newaxis].astype(np.uint8)
    return _build(
        source,
        pixel_array,
        SegmentationTypeValues.BINARY,
        descriptions,
        algorithm,
        kind="Opacity mask",
        content_description="Lung opacity mask" + (" and lung field" if lung_mask is not None else ""),
        series_number=series_number,
    )


def write_dataset_atomically(dataset: pydicom.Dataset, path: Path) -> None:
    """Write a DICOM Part 10 file so that ``path`` never holds a partial file.

    The dataset goes to a temporary file in the same folder, which is flushed, fsynced and then
    renamed onto ``path`` with :func:`os.replace`; the folder is fsynced afterwards where the
    platform allows it. On error the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    dataset : pydicom.Dataset
        Dataset with file meta information (e.g. a highdicom SOP instance).
    path : pathlib.Path
        Final file name; its folder must exist.
    """
    write_atomically(Path(path), lambda stream: dataset.save_as(stream, enforce_file_format=True))

