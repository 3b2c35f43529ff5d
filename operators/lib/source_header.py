"""What every output object (SEG, SC, SR) takes from its source radiograph's header, and how.

The rules, applied to a private copy (the caller's dataset is never modified):

* Patient and study modules: copied (by highdicom). Type 2 attributes that highdicom reads with plain
  attribute access (PatientID, PatientName, PatientBirthDate, PatientSex, AccessionNumber, StudyID,
  StudyDate, StudyTime) are added empty when the source lacks them (e.g. NIH secondary captures),
  since highdicom would otherwise raise ``AttributeError``; they (and ReferringPhysicianName) are
  emptied when their value is one highdicom refuses (PatientSex ``"Male"``, a date ``"2020-01-01"``).
* Copied patient/study values that break their VR (RSNA's PatientAge ``"51"``) are removed from the
  finished object (type 3) or emptied (type 2) by :func:`drop_invalid_copied_values`; nothing is
  guessed (``"51"`` is not rewritten to ``"051Y"``).
* Geometry: the source's own FrameOfReferenceUID, PositionReferenceIndicator, ImageOrientationPatient,
  ImagePositionPatient, SliceThickness and SpacingBetweenSlices are never passed on (a projection
  radiograph has no place in a patient frame of reference). Objects that need a geometry to be shown
  as an overlay (the SEGs: OHIF and dcmqi require Plane Orientation, Plane Position and Pixel
  Measures) get the **nominal image-plane geometry** of :func:`nominal_geometry` instead: a frame of
  reference of their own, derived from the source image (so every overlay of one image shares it),
  the image's top-left pixel at the origin, rows along +x and columns along +y (orientation
  ``1\\0\\0\\0\\1\\0``), one nominal 1 mm "slice", and the source's pixel spacing. That frame locates
  the overlay on the source pixel grid; it says nothing about where the patient was.
* Pixel spacing of that geometry, in order of preference: the source's PixelSpacing (spacing in the
  patient, already corrected for magnification where the modality did so); else its
  ImagerPixelSpacing (at the detector plane — distances measured on the overlay are then detector
  distances, larger than in the patient by the geometric magnification, typically 1.1–1.2 for a PA
  chest); else 1 mm × 1 mm, stated as nominal. A value is used only when it is exactly two finite
  numbers > 0 (:func:`usable_spacing`); which one was used is recorded in the object's
  ``DerivationDescription``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pydicom
from pydicom import config
from pydicom.valuerep import DA, TM, format_number_as_ds, validate_value

#: Type 2 attributes highdicom's constructors read with plain attribute access from the source.
TYPE2_SOURCE_ATTRIBUTES = (
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
#: The source's spatial attributes: never copied (see the module docstring).
SPATIAL_ATTRIBUTES = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
)
#: Text VRs whose copied values are checked.
_CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: Orientation of the nominal image plane: rows along +x, columns along +y.
NOMINAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Thickness of the nominal image plane (mm): required beside a frame of reference, meaningless here.
NOMINAL_THICKNESS_MM = 1.0


def usable_spacing(value) -> list[float] | None:
    """``[row, column]`` spacing in mm when ``value`` is exactly two finite numbers > 0, else None."""
    if value is None:
        return None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values


def usable_pixel_spacing(source: pydicom.Dataset) -> list[float] | None:
    """The source's PixelSpacing if usable (:func:`usable_spacing`), else None."""
    return usable_spacing(source.get("PixelSpacing"))


@dataclass(frozen=True)
class NominalGeometry:
    """The image-plane geometry an overlay gets (module docstring): spacing and what it means."""

    frame_of_reference_uid: str
    spacing_mm: tuple[float, float]
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing" or "none"

    @property
    def description(self) -> str:
        """One sentence for DerivationDescription: which spacing, in which plane."""
        text = {
            "PixelSpacing": "pixel spacing from the source's PixelSpacing (in the patient)",
            "ImagerPixelSpacing": "pixel spacing from the source's ImagerPixelSpacing (at the detector plane, not corrected for magnification)",
            "none": "nominal pixel spacing of 1 mm: the source has no usable PixelSpacing or ImagerPixelSpacing",
        }[self.spacing_source]
        return f"Nominal image-plane geometry (origin at the top-left pixel, orientation 1\\0\\0\\0\\1\\0); {text}."


def nominal_geometry(source: pydicom.Dataset, frame_of_reference_uid: str) -> NominalGeometry:
    """The geometry of the overlays of ``source`` (see the module docstring for the spacing order)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = usable_spacing(source.get(keyword))
        if spacing is not None:
            return NominalGeometry(frame_of_reference_uid, (spacing[0], spacing[1]), keyword)
    return NominalGeometry(frame_of_reference_uid, (1.0, 1.0), "none")


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


def _ds(value: float) -> str:
    return format_number_as_ds(float(f"{value:.12g}"))


def prepare_source(source: pydicom.Dataset, geometry: NominalGeometry | None = None) -> pydicom.Dataset:
    """A copy of the source header (no pixels) with the copy rules applied; with ``geometry``, the
    nominal image-plane geometry in place of the source's own (for highdicom's patient-frame mode)."""
    prepared = pydicom.Dataset()
    for tag in source.keys():
        if tag.group == 0x7FE0:  # Pixel Data, Float Pixel Data, ...: never touched, never copied
            continue
        prepared.add(copy.deepcopy(source[tag]))
    for keyword in (*TYPE2_SOURCE_ATTRIBUTES, "ReferringPhysicianName"):
        if keyword not in prepared or prepared[keyword].value is None:
            setattr(prepared, keyword, "")
        elif not _acceptable_to_highdicom(prepared[keyword]):
            prepared[keyword].value = ""
    for keyword in SPATIAL_ATTRIBUTES:
        if keyword in prepared:
            delattr(prepared, keyword)
    if geometry is not None:
        prepared.FrameOfReferenceUID = geometry.frame_of_reference_uid
        prepared.PositionReferenceIndicator = ""
        prepared.ImagePositionPatient = ["0", "0", "0"]
        prepared.ImageOrientationPatient = [_ds(v) for v in NOMINAL_ORIENTATION]
        prepared.PixelSpacing = [_ds(v) for v in geometry.spacing_mm]
        prepared.SliceThickness = _ds(NOMINAL_THICKNESS_MM)
    return prepared


def drop_invalid_copied_values(ds: pydicom.Dataset, prepared: pydicom.Dataset) -> None:
    """Remove values copied from the source that break their VR (e.g. PatientAge ``"51"``).

    Only top-level elements whose value equals the source's are looked at (the patient and study
    attributes highdicom copied). A type 2 attribute is emptied, any other is removed.
    """
    for element in list(ds):
        if element.VR not in _CHECKED_VRS or element.tag not in prepared:
            continue
        if element.value != prepared[element.tag].value or element.keyword in _NEVER_DROPPED:
            continue
        values = element.value if element.VM > 1 else [element.value]
        try:
            for value in values:
                validate_value(element.VR, str(value), config.RAISE)
        except ValueError:
            if element.keyword in TYPE2_SOURCE_ATTRIBUTES or element.keyword in _TYPE2_OTHERS:
                ds[element.tag].value = ""
            else:
                del ds[element.tag]
