"""Structured report of one image's result: highdicom TID 1500 in a Comprehensive 3D SR.

What a reading workstation or a downstream system gets, without decoding any pixels:

* one image-level group (TID 1501, tracking id "Lung opacity score"): the study's opacity score as
  a measurement (DCM 122157 "Probability", unit UCUM ``1``) and the gate decision as a qualitative
  evaluation (DCM 112001 "Opacity" = SCT "Present" / "Absent"), finding site SCT "Lung", the source
  radiograph as source image;
* one planar ROI group (TID 1410, tracking id "Lung opacity (segmentation)"): a reference to the
  Opacity segment of a SEG (DCM "Referenced Segmentation Frame"), with the segment's Tracking UID;
* optionally one planar ROI group per opacity region (TID 1410, "Lung opacity region N"): the
  region's bounding rectangle on the source image as 2D image coordinates (SCOORD POLYLINE, closed,
  through the pixel edges: (0, 0) is the top-left corner of the top-left pixel, points are
  (column, row));
* in every group, the algorithm identification (TID 4019: name, version, parameters ``preset=…``
  and ``gate_threshold=…``); the whole report is observed by a device named after the algorithm.

The document is COMPLETE, UNVERIFIED and PRELIMINARY (an algorithm's output, signed by nobody); its
series description says "NOT FOR CLINICAL USE". Patient and study attributes follow the copy rules of
:mod:`operators.lib.seg_output`, so the SR matches the SEGs and the SC of the same image. The SOP
class is Comprehensive 3D SR because it is the one highdicom writes TID 1500 into; the content uses
2D coordinates only, since a projection radiograph has no frame of reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid

from operators.lib.components import Box
from operators.lib.seg_output import (
    LUNG_CODE,
    OPACITY_CATEGORY_CODE,
    OPACITY_CODE,
    AlgorithmInfo,
    _drop_invalid_copied_values,
    _prepare_source,
    series_description,
)

#: Procedure reported (SCT 399208008 "Plain chest X-ray").
PROCEDURE_CODE = Code("399208008", "SCT", "Plain chest X-ray")
#: Concept name of the opacity score measurement (DCM 122157 "Probability").
SCORE_CODE: Code = codes.DCM.Probability
#: Unit of the score (UCUM "1", no units).
SCORE_UNIT: Code = codes.UCUM.NoUnits
#: Decision values of the qualitative evaluation named :data:`OPACITY_CODE`.
PRESENT_CODE: Code = codes.SCT.Present
ABSENT_CODE: Code = codes.SCT.Absent
#: Tracking identifiers of the groups (LO, at most 64 characters).
SCORE_TRACKING_ID = "Lung opacity score"
SEGMENT_TRACKING_ID = "Lung opacity (segmentation)"
REGION_TRACKING_ID = "Lung opacity region {n}"
_LO_MAX = 64


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


def _segment_reference(
    source: pydicom.Dataset, seg: hd.seg.Segmentation, segment_number: int
) -> hd.sr.ReferencedSegmentationFrame:
    """"Referenced Segmentation Frame" to one segment of ``seg``, by segment number, and its source.

    Built from its two content items rather than with ``from_segmentation``, which (highdicom 0.28.2)
    fails on a one-segment SEG and writes ReferencedFrameNumber beside ReferencedSegmentNumber. The
    Image SOP Instance Reference macro (PS3.3 Table 10-3) allows only one of the two for a SEG, and
    no frame number for a single-frame source; dciodvfy reports either as an error. The segment
    number names the segment whatever the frame layout.
    """
    segment = hd.sr.ImageContentItem(
        name=codes.DCM.ReferencedSegmentationFrame,
        referenced_sop_class_uid=seg.SOPClassUID,
        referenced_sop_instance_uid=seg.SOPInstanceUID,
        referenced_segment_numbers=segment_number,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    image = hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID)
    return hd.sr.ReferencedSegmentationFrame.from_sequence([segment, image])


def _region_group(
    index: int,
    box: Box | Sequence[int],
    source: pydicom.Dataset,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    box = box if isinstance(box, Box) else Box(*(int(v) for v in box))
    top, left, bottom, right = box.top, box.left, box.bottom, box.right
    rows, cols = int(source.Rows), int(source.Columns)
    if not (0 <= top < bottom <= rows and 0 <= left < right <= cols):
        raise ValueError(f"Region {index} {(top, left, bottom, right)} (top, left, bottom, right) is empty or outside the "
                         f"{rows}×{cols} image.")
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=np.float32)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=REGION_TRACKING_ID.format(n=index)),
        referenced_region=region,
        finding_type=OPACITY_CODE,
        finding_category=OPACITY_CATEGORY_CODE,
        finding_sites=[hd.sr.FindingSite(LUNG_CODE)],
        algorithm_id=algorithm_id,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(OPACITY_CODE, PRESENT_CODE)],
    )


def build_opacity_sr(
    source: pydicom.Dataset,
    seg: hd.seg.Segmentation,
    opacity_score: float,
    positive: bool,
    threshold: float,
    algorithm: AlgorithmInfo,
    *,
    regions: Sequence[Box | Sequence[int]] = (),
    series_number: int = 9104,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 measurement report of one radiograph's opacity result.

    Parameters
    ----------
    source : pydicom.Dataset
        Header of the single-frame source radiograph (PixelData not needed).
    seg : highdicom.seg.Segmentation
        A SEG of this source with one Opacity (DCM 112001) segment, e.g. the BINARY SEG; the report
        references that segment and lists the SEG as evidence.
    opacity_score : float
        The study's opacity score in [0, 1] (mean of the four scores).
    positive : bool
        The gate decision (score ≥ threshold).
    threshold : float
        The gate threshold in [0, 1]; recorded as an algorithm parameter.
    algorithm : AlgorithmInfo
        Algorithm identity.
    regions : sequence of Box or of (top, left, bottom, right), optional
        Opacity regions in source pixels, bottom and right exclusive (e.g.
        ``component_boxes(opacity_mask, 8)``); each becomes a planar ROI with 2D coordinates.
    series_number : int, optional
        Series Number of the new series.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The report, in the source's study, in a new series.

    Raises
    ------
    ValueError
        When the score or threshold is not a finite number in [0, 1], the SEG is not a SEG of this
        source with one Opacity segment, or a region is empty or outside the image.
    """
    for name, value in (("opacity_score", opacity_score), ("threshold", threshold)):
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a finite number in [0, 1]; got {value!r}.")
    _check_seg(source, seg)
    segment_number = opacity_segment_number(seg)
    algorithm_id = _algorithm_id(algorithm, float(threshold))

    score_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=SCORE_TRACKING_ID),
        finding_type=OPACITY_CODE,
        finding_category=OPACITY_CATEGORY_CODE,
        finding_sites=[hd.sr.FindingSite(LUNG_CODE)],
        algorithm_id=algorithm_id,
        measurements=[hd.sr.Measurement(name=SCORE_CODE, value=float(opacity_score), unit=SCORE_UNIT,
                                        algorithm_id=algorithm_id)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(OPACITY_CODE, PRESENT_CODE if positive else ABSENT_CODE)],
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )
    segment_item = seg.get_segment_description(segment_number)
    segment_group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment_item.tracking_uid or hd.UID(),
                                                     identifier=SEGMENT_TRACKING_ID),
        referenced_segment=_segment_reference(source, seg, segment_number),
        finding_type=OPACITY_CODE,
        finding_category=OPACITY_CATEGORY_CODE,
        finding_sites=[hd.sr.FindingSite(LUNG_CODE)],
        algorithm_id=algorithm_id,
    )
    region_groups = [_region_group(n, box, source, algorithm_id) for n, box in enumerate(regions, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=_device_observer(algorithm),
        procedure_reported=PROCEDURE_CODE,
        imaging_measurements=[score_group, segment_group, *region_groups],
    )

    prepared = _prepare_source(source)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[prepared, seg],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=f"{algorithm.name} MAP"[:_LO_MAX],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description("Opacity report", algorithm.preset),
        manufacturer_model_name=algorithm.name[:_LO_MAX],
        software_versions=algorithm.version[:_LO_MAX],
    )
    _drop_invalid_copied_values(sr, prepared)
    return sr
