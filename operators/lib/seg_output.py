"""DICOM SEG output for a single-frame chest radiograph, built with highdicom.

Three SEGs per processed image, all on the source's pixel grid, in the source's study:

* ``build_probability_seg`` — FRACTIONAL / PROBABILITY, one segment "Opacity": the exact final map
  (stored as round(p × 255)). The standard's representation of a probability map; OHIF 3.13 does not
  render FRACTIONAL SEGs (dcmjs: "Fractional segmentations are not yet supported"), Slicer does.
* ``build_binary_seg`` — BINARY: segment 1 "Opacity" (final map ≥ the preset's threshold), segment 2
  "Lung" (the lung mask).
* ``build_band_seg`` — BINARY, the probability map as exclusive bands (:data:`PROBABILITY_BANDS`:
  0.50–0.75, 0.75–0.90, ≥ 0.90), coloured yellow → red: what OHIF shows as a heat map overlay.
  (A LABELMAP SEG would suit exclusive bands and has byte-aligned frames, but OHIF 3.13 shifts its
  segment colours by one; BINARY it is.)

Known viewer limitation, not ours to fix: OHIF 3.13 with Orthanc 1.10 cannot load a BINARY SEG whose
frames are not byte-aligned (rows × columns not a multiple of 8, as for the 1955 × 1841 NEMA RG1 test
image): OHIF's whole-instance prefetch rejects the even-length padding byte of the pixel data ("The
calculated length … does not match the actual length …") and Orthanc's per-frame endpoint answers
400 ("Bad file format"). dcmqi and highdicom read those SEGs; the heat-map Secondary Capture shows the
result in any viewer.

Every SEG carries the nominal image-plane geometry of :mod:`operators.lib.source_header` (frame of
reference, Plane Orientation, Plane Position, Pixel Measures with the source's spacing): OHIF crashes
on a SEG without Pixel Measures / Plane Orientation, and dcmqi refuses one without Plane Orientation.
Every segment has a display colour (RecommendedDisplayCIELabValue) and every SEG a
ContentCreatorName (the algorithm), so readers paint Opacity red and Lung green instead of one
default colour. Series and SOP Instance UIDs are derived from the case (:mod:`operators.lib.uids`):
the same image processed again by the same version and preset gives the same UIDs. All frames are
kept (``omit_empty_frames=False``), so an empty mask (a negative study) still gives one frame per
segment and every described segment has pixel data. The header copy rules are
:mod:`operators.lib.source_header`'s.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

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
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from operators.lib.source_header import drop_invalid_copied_values, nominal_geometry, prepare_source
from operators.lib.uids import case_key, frame_of_reference_uid, result_uids, tracking_uid

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

#: Display colours (RGB, written as CIELab): Opacity red, Lung green.
OPACITY_RGB = (235, 40, 40)
LUNG_RGB = (40, 200, 80)
#: The band SEG's segments: (label, lower bound inclusive, upper bound exclusive, RGB), exclusive bands.
PROBABILITY_BANDS: tuple[tuple[str, float, float, tuple[int, int, int]], ...] = (
    ("Opacity p 0.50-0.75", 0.50, 0.75, (255, 220, 0)),
    ("Opacity p 0.75-0.90", 0.75, 0.90, (255, 140, 0)),
    ("Opacity p >= 0.90", 0.90, 1.01, (230, 20, 20)),
)
#: Series numbers of the result objects (the SC and SR modules use 9103 and 9104).
PROBABILITY_SERIES, BINARY_SERIES, BAND_SERIES = 9101, 9102, 9105

#: Content Label (CS, at most 16 characters) of both SEG objects.
CONTENT_LABEL = "OPACITY"
#: Marker every series description carries.
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
#: Largest length of a LO value (SeriesDescription, Manufacturer, ...).
_LO_MAX = 64
#: Denominator of the fractional encoding.
MAX_FRACTIONAL_VALUE = 255

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


def _check_frame_shape(source: pydicom.Dataset, array: np.ndarray, what: str) -> None:
    """Raise ValueError unless ``array`` is 2D with the source's Rows × Columns."""
    expected = (int(source.Rows), int(source.Columns))
    if array.ndim != 2 or tuple(array.shape) != expected:
        raise ValueError(f"{what} has shape {array.shape}, source is {expected} (Rows × Columns)")


def _checked_probability(source: pydicom.Dataset, prob_map: np.ndarray) -> np.ndarray:
    """``prob_map`` as an array after checking shape (the source's), float type, finiteness and range."""
    prob_map = np.asarray(prob_map)
    _check_frame_shape(source, prob_map, "prob_map")
    if not np.issubdtype(prob_map.dtype, np.floating):
        raise ValueError(f"prob_map must be floating point, got {prob_map.dtype}")
    if not np.all(np.isfinite(prob_map)):
        raise ValueError("prob_map has NaN or infinite values")
    if prob_map.size and (prob_map.min() < 0.0 or prob_map.max() > 1.0):
        raise ValueError(f"prob_map values must lie in [0, 1], got [{prob_map.min()}, {prob_map.max()}]")
    return prob_map


def _algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=ALGORITHM_FAMILY_CODE,
        version=algorithm.version,
        parameters={"preset": algorithm.preset},
    )


def _colour(rgb: tuple[int, int, int]) -> hd.color.CIELabColor:
    return hd.color.CIELabColor.from_rgb(*rgb)


def _opacity_description(algorithm: AlgorithmInfo, key: str, number: int = 1, label: str = "Opacity",
                         rgb: tuple[int, int, int] = OPACITY_RGB, tracking_id: str = "Lung opacity") -> SegmentDescription:
    return SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=OPACITY_CATEGORY_CODE,
        segmented_property_type=OPACITY_CODE,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_identification(algorithm),
        tracking_uid=tracking_uid(key, algorithm.version, algorithm.preset, tracking_id),
        tracking_id=tracking_id,
        anatomic_regions=[LUNG_CODE],
        display_color=_colour(rgb),
    )


def _lung_description(algorithm: AlgorithmInfo, key: str) -> SegmentDescription:
    return SegmentDescription(
        segment_number=2,
        segment_label="Lung",
        segmented_property_category=LUNG_CATEGORY_CODE,
        segmented_property_type=LUNG_CODE,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_identification(algorithm),
        tracking_uid=tracking_uid(key, algorithm.version, algorithm.preset, "Lung field"),
        tracking_id="Lung field",
        display_color=_colour(LUNG_RGB),
    )


def content_creator_name(algorithm: AlgorithmInfo) -> str:
    """ContentCreatorName (PN) of every object: the algorithm, as a person-name family component."""
    return f"{algorithm.name}^{algorithm.version}"[:64]


def _build(
    source: pydicom.Dataset,
    pixel_array: np.ndarray,
    segmentation_type: SegmentationTypeValues,
    descriptions: list[SegmentDescription],
    algorithm: AlgorithmInfo,
    kind: str,
    content_description: str,
    series_number: int,
    key: str,
    uid_kind: str,
) -> Segmentation:
    """The SEG of ``source``; ``key`` (:func:`~operators.lib.uids.case_key`) derives its UIDs and frame of reference."""
    geometry = nominal_geometry(source, frame_of_reference_uid(key))
    prepared = prepare_source(source, geometry)
    series_uid, instance_uid = result_uids(key, algorithm.version, algorithm.preset, uid_kind)
    now = datetime.datetime.now()
    seg = Segmentation(
        source_images=[prepared],
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
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
        content_creator_name=content_creator_name(algorithm),
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
    seg.DerivationDescription = geometry.description
    drop_invalid_copied_values(seg, prepared)
    return seg


def build_probability_seg(
    source: pydicom.Dataset,
    prob_map: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = PROBABILITY_SERIES,
    source_key: str | None = None,
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
    source_key : str, optional
        What the result UIDs are derived from (the case id); the source's SOP Instance UID by default.

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG, in the source's study, in a new series; values stored as round(p × 255).

    Raises
    ------
    ValueError
        When the shape does not match the source or values are not finite or outside [0, 1].
    """
    prob_map = _checked_probability(source, prob_map)
    # Stacked-segments layout (frames, rows, columns, segments): highdicom reads a float 2D array
    # the same way, but the explicit form leaves no doubt that this is one segment.
    pixel_array = prob_map.astype(np.float32, copy=False)[np.newaxis, :, :, np.newaxis]
    key = case_key(source, source_key)
    return _build(
        source,
        pixel_array,
        SegmentationTypeValues.FRACTIONAL,
        [_opacity_description(algorithm, key)],
        algorithm,
        kind="Opacity probability",
        content_description="Lung opacity probability",
        series_number=series_number,
        key=key,
        uid_kind="seg-probability",
    )


def build_binary_seg(
    source: pydicom.Dataset,
    opacity_mask: np.ndarray,
    lung_mask: np.ndarray | None,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = BINARY_SERIES,
    source_key: str | None = None,
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
    source_key : str, optional
        What the result UIDs are derived from (the case id); the source's SOP Instance UID by default.

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
    key = case_key(source, source_key)
    descriptions = [_opacity_description(algorithm, key)]
    if lung_mask is not None:
        masks.append(np.asarray(lung_mask))
        descriptions.append(_lung_description(algorithm, key))
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
        key=key,
        uid_kind="seg-binary",
    )


def band_labels(prob_map: np.ndarray, bands: Sequence[tuple[str, float, float, tuple[int, int, int]]] = PROBABILITY_BANDS
                ) -> np.ndarray:
    """H×W uint8 label map: ``b`` (counted from 1) where lower_b ≤ p < upper_b, 0 in no band (the bands are exclusive).

    highdicom takes it as the BINARY SEG's segments (one frame per band, SegmentsOverlap NO) and
    builds the same object as from stacked per-band masks, without checking the stack for overlaps
    (0.012 s against 0.021 s for a 1024² map)."""
    prob_map = np.asarray(prob_map)
    labels = np.zeros(prob_map.shape, dtype=np.uint8)
    for number, (_, low, high, _) in enumerate(bands, start=1):
        labels[(prob_map >= low) & (prob_map < high)] = number
    return labels


def build_band_seg(
    source: pydicom.Dataset,
    prob_map: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = BAND_SERIES,
    source_key: str | None = None,
) -> Segmentation:
    """Build a BINARY SEG of the probability map in exclusive bands (:data:`PROBABILITY_BANDS`), one
    segment per band, coloured yellow → red: the heat map a viewer without FRACTIONAL support shows.

    ``prob_map`` is checked as for :func:`build_probability_seg`; pixels below the lowest band are in
    no segment. Returns the SEG, in the source's study, in a new series, one frame per band.
    """
    prob_map = _checked_probability(source, prob_map)
    key = case_key(source, source_key)
    descriptions = [_opacity_description(algorithm, key, number, label, rgb, tracking_id=label)
                    for number, (label, _, _, rgb) in enumerate(PROBABILITY_BANDS, start=1)]
    pixel_array = band_labels(prob_map)[np.newaxis]  # (frames, rows, columns): a label map
    return _build(
        source,
        pixel_array,
        SegmentationTypeValues.BINARY,
        descriptions,
        algorithm,
        kind="Opacity probability bands",
        content_description="Lung opacity probability bands",
        series_number=series_number,
        key=key,
        uid_kind="seg-bands",
    )
