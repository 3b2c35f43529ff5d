"""DICOM input: find files, keep frontal chest radiographs, decode their pixels.

Every rule that decides whether a file is processed lives here, as data at the top of the module,
and every refusal is an :class:`InputRejected` whose message names the file and the reason.

Pixel convention of a decoded :class:`CxrImage`: float32, H×W, values in [0, 1], MONOCHROME2 sense
(0 = black = air, 1 = white = bone), after the modality LUT, the VOI LUT or window when the file has
one, and MONOCHROME1 inversion.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from operators.lib.errors import InputRejected

logger = logging.getLogger(__name__)

#: Modalities accepted as chest radiographs without further evidence.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
#: Modalities of secondary captures, accepted only when BodyPartExamined names the chest.
SECONDARY_CAPTURE_MODALITIES = frozenset({"OT", "SC"})
#: BodyPartExamined values that mean chest (upper case; absent is accepted for CR/DX).
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
#: ViewPosition values of frontal views (absent is accepted).
FRONTAL_VIEW_POSITIONS = frozenset({"PA", "AP", ""})
#: SOP classes whose pixels are a single 2D radiograph we can read.
ACCEPTED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC (single frame only)
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC (single frame only)
    }
)
#: Smallest and largest accepted image side, in pixels.
MIN_SIDE_PX = 256
MAX_SIDE_PX = 8192
#: Words in free-text header fields that mark a lateral/oblique view or a veterinary image.
_LATERAL_WORDS = re.compile(r"\b(LAT|LATERAL|LATERALE|OBLIQUE|OBL|DECUBITUS)\b", re.IGNORECASE)
_VETERINARY_WORDS = re.compile(
    r"\b(CANINE|FELINE|EQUINE|BOVINE|PORCINE|OVINE|VETERINAR\w*|DOG|CAT)\b", re.IGNORECASE
)
_TEXT_FIELDS = (
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
    "PerformedProcedureStepDescription",
)
_HUMAN_SPECIES = re.compile(r"^(HOMO SAPIENS|HUMAN)$", re.IGNORECASE)


@dataclass(frozen=True)
class CxrImage:
    """One frontal chest radiograph, decoded and ready for the models.

    Attributes:
        case_id: unique key of this image in the run; also its output folder name.
        path: the input file.
        dataset: the source header (pixel data removed), used to build the output DICOM.
        pixels: float32 H×W in [0, 1], MONOCHROME2 sense (see module docstring).
        warnings: things worth telling the user that did not stop processing.
    """

    case_id: str
    path: Path
    dataset: Dataset
    pixels: np.ndarray
    warnings: tuple[str, ...] = field(default=())
    decode_seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the source image."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def find_input_files(folder: Path) -> list[Path]:
    """All regular files under ``folder``, recursively, in a stable (sorted) order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Input folder {folder} does not exist or is not a folder.")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_dicom(path: Path) -> Dataset:
    """Read a DICOM file (header and pixels); raise InputRejected if it is not DICOM."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise InputRejected(f"{path}: not a DICOM file ({exc}).") from exc
    except Exception as exc:  # pydicom raises many types on truncated/garbled files
        raise InputRejected(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc}).") from exc


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def check_chest_radiograph(ds: Dataset, path: Path) -> list[str]:
    """Raise InputRejected unless ``ds`` is a single-frame frontal chest radiograph of a human.

    Returns warnings (e.g. missing BodyPartExamined) for an accepted file.
    """
    warnings: list[str] = []
    name = str(path)
    modality = _text(ds, "Modality").upper()
    sop_class = str(ds.get("SOPClassUID", ""))
    body_part = _text(ds, "BodyPartExamined").upper()

    if "PixelData" not in ds:
        raise InputRejected(f"{name}: has no pixel data (SOP class {UID(sop_class).name or sop_class!r}).")
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise InputRejected(
            f"{name}: SOP class {UID(sop_class).name or sop_class!r} is not a radiograph storage class "
            "(expected CR, DX for presentation, or secondary capture)."
        )
    if modality in SECONDARY_CAPTURE_MODALITIES:
        if body_part not in CHEST_BODY_PARTS:
            raise InputRejected(
                f"{name}: Modality {modality} secondary capture with BodyPartExamined {body_part or 'absent'!r}; "
                "a secondary capture is accepted only when BodyPartExamined is CHEST."
            )
    elif modality not in RADIOGRAPH_MODALITIES:
        raise InputRejected(
            f"{name}: Modality is {modality or 'absent'!r}; expected one of {sorted(RADIOGRAPH_MODALITIES)}."
        )
    if body_part and body_part not in CHEST_BODY_PARTS:
        raise InputRejected(f"{name}: BodyPartExamined is {body_part!r}, not a chest.")
    if not body_part:
        warnings.append("BodyPartExamined is absent; assumed chest.")

    species = _text(ds, "PatientSpeciesDescription")
    if species and not _HUMAN_SPECIES.match(species):
        raise InputRejected(f"{name}: PatientSpeciesDescription is {species!r}; only human radiographs are processed.")
    for keyword in _TEXT_FIELDS:
        text = _text(ds, keyword)
        if _VETERINARY_WORDS.search(text):
            raise InputRejected(f"{name}: {keyword} {text!r} describes a veterinary image; only human radiographs are processed.")

    view = _text(ds, "ViewPosition").upper()
    if view not in FRONTAL_VIEW_POSITIONS:
        raise InputRejected(f"{name}: ViewPosition is {view!r}; only frontal views (PA, AP) are processed.")
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", ""))
        if _LATERAL_WORDS.search(meaning):
            raise InputRejected(f"{name}: ViewCodeSequence says {meaning!r}; only frontal views are processed.")
    for keyword in _TEXT_FIELDS:
        text = _text(ds, keyword)
        if _LATERAL_WORDS.search(text):
            raise InputRejected(f"{name}: {keyword} {text!r} describes a lateral or oblique view; only frontal views are processed.")
    if not view:
        warnings.append("ViewPosition is absent; assumed frontal.")

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputRejected(f"{name}: has {frames} frames; only single-frame radiographs are processed.")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputRejected(
            f"{name}: PhotometricInterpretation {photometric or 'absent'!r} with {samples} sample(s) per pixel "
            "is not a greyscale radiograph (expected MONOCHROME1 or MONOCHROME2)."
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if min(rows, cols) < MIN_SIDE_PX:
        raise InputRejected(f"{name}: image is {rows}×{cols} px; the smallest accepted side is {MIN_SIDE_PX} px.")
    if max(rows, cols) > MAX_SIDE_PX:
        raise InputRejected(f"{name}: image is {rows}×{cols} px; the largest accepted side is {MAX_SIDE_PX} px.")
    return warnings


def decode_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Decode to float32 H×W in [0, 1], MONOCHROME2 sense; raise InputRejected on failure.

    Order: stored values (Bits Stored honoured by the decoder) → modality LUT / rescale → VOI LUT or
    window (first one) when present → MONOCHROME1 inversion → min-max scaling. A constant image
    (e.g. an all-zero decode) is an error, not an empty image.
    """
    name = str(path)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise InputRejected(
            f"{name}: pixel data cannot be decoded (transfer syntax {UID(str(syntax)).name or syntax}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if stored.ndim != 2:
        raise InputRejected(f"{name}: decoded pixel array has shape {stored.shape}; expected one 2D frame.")
    values = apply_modality_lut(stored, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        try:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        except Exception as exc:  # malformed VOI: fall back to the full range, say so
            logger.warning("%s: VOI LUT/window not applied (%s); using the full pixel range.", name, exc)
    if not np.all(np.isfinite(values)):
        raise InputRejected(f"{name}: pixel values include NaN or infinity after the modality/VOI LUT.")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputRejected(f"{name}: pixel data decodes to a constant image (every pixel {low:g}); nothing to analyse.")
    scaled = ((values - low) / (high - low)).astype(np.float32)
    if _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled


def load_cxr(path: Path, case_id: str) -> CxrImage:
    """Read, check and decode one file into a :class:`CxrImage`, or raise InputRejected."""
    ds = read_dicom(path)
    warnings = check_chest_radiograph(ds, path)
    pixels = decode_pixels(ds, path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if pixels.shape != (rows, cols):
        raise InputRejected(f"{path}: decoded {pixels.shape} pixels but the header says {rows}×{cols}.")
    header = ds.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    return CxrImage(case_id=case_id, path=Path(path), dataset=header, pixels=pixels, warnings=tuple(warnings))
