"""Structured report of one image's result: highdicom TID 1500 in a Comprehensive 3D SR, shaped so that
OHIF loads it (every measurement group has image coordinates) and dcmqi's ``tid1500reader`` reads it.

What a reading workstation or a downstream system gets, without decoding any pixels:

* one measurement group (TID 1501, tracking id "Lung opacity score"): the study's opacity score as a
  measurement (DCM 122157 "Probability", unit UCUM ``1``) and the gate decision as a qualitative
  evaluation (DCM 112001 "Opacity" = SCT "Present" / "Absent"), finding site SCT "Lung"; the score is
  INFERRED FROM the bounding rectangle of the lung fields (the whole image when no lung was found);
* one measurement group per opacity region (TID 1501, "Lung opacity region N"; at most
  :data:`SR_MAX_REGIONS`, largest first, none smaller than :data:`MIN_REGION_FRACTION` of the image):
  its mean probability INFERRED FROM the region's bounding rectangle, Opacity Present, and as finding
  site what it overlaps — SCT "Lung" when at least :data:`MIN_LUNG_OVERLAP` of it lies in the lung
  mask, else SCT "Thoracic structure";
* rectangles are 2D image coordinates on the source image (SCOORD POLYLINE, closed, through the pixel
  edges: (0, 0) is the top-left corner of the top-left pixel, points are (column, row)), SELECTED FROM
  the source image;
* in every group, the algorithm identification (TID 4019: name, version, parameters ``preset=…`` and
  ``gate_threshold=…``); the whole report is observed by a device named after the algorithm; the
  BINARY SEG (and the source image) are listed as evidence.

Why TID 1501 with the rectangle inside the measurement, not TID 1410 with an Image Region beside it
(the previous version), nor a group without coordinates (the first): OHIF 3.13 draws each group's
rectangle with its "Probability" label from this shape (the one OHIF writes itself). The TID 1410 groups
were offered for tracking ("rehydrating"), but OHIF's dcmjs then looked for the SCOORD inside the
group's NUM item, found none and dropped every rectangle the moment the user said "Yes"; OHIF 3.13 does
not offer tracking for these TID 1501 groups (it tracks only its own tool measurements), so the
rectangles stay. Without coordinates its SR viewport failed on the missing image reference.
The SEG is still referenced, as evidence.

The document is COMPLETE, UNVERIFIED and PRELIMINARY (an algorithm's output, signed by nobody); its
series description says "NOT FOR CLINICAL USE". Patient and study attributes follow the copy rules of
:mod:`operators.lib.source_header`. The SOP class is Comprehensive 3D SR because it is the one
highdicom writes TID 1500 into; the content uses 2D coordinates only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid

from operators.lib.components import Box, component_boxes
from operators.lib.seg_output import LUNG_CODE, OPACITY_CATEGORY_CODE, OPACITY_CODE, AlgorithmInfo, series_description
from operators.lib.source_header import drop_invalid_copied_values, prepare_source
from operators.lib.uids import case_key, result_uids, tracking_uid

#: Procedure reported (SCT 399208008 "Plain chest X-ray").
PROCEDURE_CODE = Code("399208008", "SCT", "Plain chest X-ray")
#: Concept name of the opacity score measurement (DCM 122157 "Probability").
SCORE_CODE: Code = codes.DCM.Probability
#: Unit of the score (UCUM "1", no units).
SCORE_UNIT: Code = codes.UCUM.NoUnits
#: Decision values of the qualitative evaluation named :data:`OPACITY_CODE`.
PRESENT_CODE: Code = codes.SCT.Present
ABSENT_CODE: Code = codes.SCT.Absent
#: Concept name of each rectangle (DCM 111030 "Image Region"): with a closed 5-point POLYLINE, the code
#: OHIF's rectangle adapter recognises (3.13 does not track TID 1501 groups yet; the code is ready for it).
RECTANGLE_PURPOSE: Code = codes.DCM.ImageRegion
#: Tracking identifiers of the groups (LO, at most 64 characters).
SCORE_TRACKING_ID = "Lung opacity score"
REGION_TRACKING_ID = "Lung opacity region {n}"
#: Finding site of a region that does not overlap the lungs.
OUTSIDE_LUNG_CODE: Code = codes.SCT.ThoracicStructure
#: At most this many opacity regions are reported (largest first).
SR_MAX_REGIONS = 8
#: Regions smaller than this fraction of the image are left out (a few stray pixels are not a finding).
MIN_REGION_FRACTION = 0.001
#: A region is "in the lung" when at least this fraction of its pixels lies in the lung mask.
MIN_LUNG_OVERLAP = 0.25
_LO_MAX = 64


@dataclass(frozen=True)
class Region:
    """One reported opacity region: its bounding box, mean final probability and whether it is in the lung."""

    box: Box
    mean_probability: float
    in_lung: bool


def opacity_regions(opacity_mask: np.ndarray, lung_mask: np.ndarray, prob_map: np.ndarray,
                    max_regions: int = SR_MAX_REGIONS, min_area_fraction: float = MIN_REGION_FRACTION) -> list[Region]:
    """The opacity mask's connected components worth reporting, largest first (module docstring)."""
    opacity_mask = np.asarray(opacity_mask, bool)
    regions = []
    for box in component_boxes(opacity_mask, max_regions, min_area_px=max(1, int(np.ceil(min_area_fraction * opacity_mask.size)))):
        window = (slice(box.top, box.bottom), slice(box.left, box.right))
        pixels = opacity_mask[window]
        inside = np.asarray(lung_mask, bool)[window][pixels]
        regions.append(Region(box, float(np.asarray(prob_map)[window][pixels].mean()), bool(inside.mean() >= MIN_LUNG_OVERLAP)))
    return regions


def lung_box(lung_mask: np.ndarray) -> Box:
    """Bounding box of the lung mask; the whole image when the mask is empty."""
    rows, cols = np.nonzero(np.asarray(lung_mask, bool))
    if rows.size == 0:
        return Box(0, 0, *np.shape(lung_mask))
    return Box(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def _algorithm_id(algorithm: AlgorithmInfo, threshold: float) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"preset={algorithm.preset}", f"gate_threshold={threshold:g}"],
    )


def _device_observer(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """The algorithm as the observing device; its UID is derived from name and version (stable)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[algorithm.name, algorithm.version]),
        name=algorithm.name[:_LO_MAX],
        manufacturer_name=f"{algorithm.name} MAP"[:_LO_MAX],
        model_name=algorithm.name[:_LO_MAX],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device)
    )


def opacity_segment_number(seg: hd.seg.Segmentation) -> int:
    """Number of the segment whose Segmented Property Type is DCM 112001 "Opacity".

    Raises
    ------
    ValueError
        When the SEG has no such segment, or more than one.
    """
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence
               if hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0]) == OPACITY_CODE]
    if len(numbers) != 1:
        raise ValueError(f"The SEG must have exactly one Opacity (DCM 112001) segment; found {len(numbers)}.")
    return numbers[0]


def _check_seg(source: pydicom.Dataset, seg: hd.seg.Segmentation) -> None:
    if seg.SOPClassUID != SegmentationStorage:
        raise ValueError(f"seg must be a Segmentation (SOP class {SegmentationStorage}); got {seg.SOPClassUID}.")
    if seg.StudyInstanceUID != source.StudyInstanceUID:
        raise ValueError(f"seg belongs to study {seg.StudyInstanceUID}, the source to {source.StudyInstanceUID}.")
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if source.SOPInstanceUID not in referenced:
        raise ValueError(f"seg does not reference the source image {source.SOPInstanceUID}.")


def _rectangle(box: Box, source: pydicom.Dataset, what: str) -> hd.sr.CoordinatesForMeasurement:
    """A closed POLYLINE through the pixel edges of ``box`` on the source image."""
    top, left, bottom, right = box.top, box.left, box.bottom, box.right
    rows, cols = int(source.Rows), int(source.Columns)
    if not (0 <= top < bottom <= rows and 0 <= left < right <= cols):
        raise ValueError(f"{what} {(top, left, bottom, right)} (top, left, bottom, right) is empty or outside the {rows}×{cols} image.")
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=np.float32)
    return hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                           source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
                                           purpose=RECTANGLE_PURPOSE)


def _probability(value: float, algorithm_id: hd.sr.AlgorithmIdentification,
                 rectangle: hd.sr.CoordinatesForMeasurement) -> hd.sr.Measurement:
    """The probability measurement (TID 300), INFERRED FROM its rectangle."""
    return hd.sr.Measurement(name=SCORE_CODE, value=float(value), unit=SCORE_UNIT, algorithm_id=algorithm_id,
                             referenced_coordinates=[rectangle])


def _group(tracking: tuple[str, str], rectangle: hd.sr.CoordinatesForMeasurement, probability: float, opacity: Code, site: Code,
           algorithm_id: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: the probability on ``rectangle``, the opacity evaluation, the finding site.
    ``tracking``: the group's (Tracking UID, Tracking Identifier)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
        finding_type=OPACITY_CODE,
        finding_category=OPACITY_CATEGORY_CODE,
        finding_sites=[hd.sr.FindingSite(site)],
        algorithm_id=algorithm_id,
        measurements=[_probability(probability, algorithm_id, rectangle)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(OPACITY_CODE, opacity)],
    )


def _check_unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a finite number in [0, 1]; got {value!r}.")


def build_opacity_sr(
    source: pydicom.Dataset,
    seg: hd.seg.Segmentation,
    opacity_score: float,
    positive: bool,
    threshold: float,
    algorithm: AlgorithmInfo,
    *,
    lungs: Box | None = None,
    regions: Sequence[Region] = (),
    series_number: int = 9104,
    source_key: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 measurement report of one radiograph's opacity result (module docstring).

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the single-frame source radiograph (PixelData not needed).
    seg : highdicom.seg.Segmentation
        A SEG of this source with one Opacity (DCM 112001) segment, e.g. the BINARY SEG: evidence.
    opacity_score : float
        The study's opacity score in [0, 1] (mean of the four scores).
    positive : bool
        The gate decision (score ≥ threshold).
    threshold : float
        The gate threshold in [0, 1]; recorded as an algorithm parameter.
    algorithm : AlgorithmInfo
        Algorithm identity.
    lungs : Box, optional
        Where the score is drawn: the lung fields' bounding box (:func:`lung_box`); the whole image by default.
    regions : sequence of Region, optional
        Opacity regions (:func:`opacity_regions`), each a group with its rectangle.
    series_number : int, optional
        Series Number of the new series.
    source_key : str, optional
        What the result UIDs are derived from (the case id); the source's SOP Instance UID by default.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The report, in the source's study, in a new series.

    Raises
    ------
    ValueError
        When the score, threshold or a region's probability is not a finite number in [0, 1], the SEG
        is not a SEG of this source with one Opacity segment, or a rectangle is empty or outside the image.
    """
    _check_unit_interval("opacity_score", opacity_score)
    _check_unit_interval("threshold", threshold)
    _check_seg(source, seg)
    opacity_segment_number(seg)
    algorithm_id = _algorithm_id(algorithm, float(threshold))
    lungs = lungs or Box(0, 0, int(source.Rows), int(source.Columns))
    key = case_key(source, source_key)

    def tracking(identifier: str) -> tuple[str, str]:
        return tracking_uid(key, algorithm.version, algorithm.preset, identifier), identifier

    score_group = _group(tracking(SCORE_TRACKING_ID), _rectangle(lungs, source, "The lung box"), opacity_score,
                         PRESENT_CODE if positive else ABSENT_CODE, LUNG_CODE, algorithm_id)
    region_groups = []
    for n, region in enumerate(regions, start=1):
        _check_unit_interval(f"region {n} mean probability", region.mean_probability)
        region_groups.append(_group(tracking(REGION_TRACKING_ID.format(n=n)), _rectangle(region.box, source, f"Region {n}"),
                                    region.mean_probability, PRESENT_CODE, LUNG_CODE if region.in_lung else OUTSIDE_LUNG_CODE,
                                    algorithm_id))
    report = hd.sr.MeasurementReport(
        observation_context=_device_observer(algorithm),
        procedure_reported=PROCEDURE_CODE,
        imaging_measurements=[score_group, *region_groups],
    )
    prepared = prepare_source(source)
    series_uid, instance_uid = result_uids(key, algorithm.version, algorithm.preset, "sr")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[prepared, seg],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=f"{algorithm.name} MAP"[:_LO_MAX],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description("Opacity report", algorithm.preset),
        manufacturer_model_name=algorithm.name[:_LO_MAX],
        software_versions=algorithm.version[:_LO_MAX],
    )
    drop_invalid_copied_values(sr, prepared)
    return sr
