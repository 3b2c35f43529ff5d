"""DICOM input: find files, keep frontal chest radiographs, decode their pixels.

Every rule that decides whether a file is processed lives here, as data at the top of the module,
and every refusal is an :class:`InputRejected` whose message names the file and the reason.

A truncated file is refused too: pydicom only warns when a file ends early and keeps what it
read, so :func:`read_dicom` checks that the last element is whole. A header value that cannot be
parsed at all is a refusal naming the element, never an unexpected exception
(``tests/reliability/test_loader_fuzz.py`` fuzzes this with mutated headers).

Pixel convention of a decoded :class:`CxrImage`: float32, H×W, values in [0, 1], MONOCHROME2 sense
(0 = black = air, 1 = white = bone), after the modality LUT, the VOI LUT or window when the file has
one, and MONOCHROME1 inversion.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.charset
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
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
#: SpecificCharacterSet values kept on the header copy that the writers use (CxrImage.dataset).
#: Any other set — an unknown term, or one highdicom cannot write ('ISO 2022 IR 149' Korean, an
#: empty single value) — is replaced by UTF-8 (ISO_IR 192) after every text value has been decoded,
#: so the output carries the same names in an encoding every writer accepts. A multi-valued set
#: whose first value is empty (the standard's ``\ISO 2022 IR 87``) gets its meaning spelled out:
#: 'ISO 2022 IR 6' (PS3.3 C.12.1.1.2).
KEPT_CHARACTER_SETS = frozenset(pydicom.charset.python_encoding) - {"", "ISO_IR 6", "ISO 2022 58", "ISO 2022 GBK",
                                                                    "ISO 2022 IR 149"}


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


def find_input_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(every regular file under ``folder``, recursively, in a stable order; the entries left out, with why).

    Symbolic links are not followed out of the folder: a link whose target lies outside ``folder``
    (a file or a folder) is left out with the reason, so an input folder cannot make the app read
    other files of the machine. Links that stay inside are followed; folder links are not walked
    (their files are reached through their real path).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Input folder {folder} does not exist or is not a folder.")
    root = folder.resolve()
    files: list[Path] = []
    left_out: list[tuple[Path, str]] = []
    for directory, subfolders, names in os.walk(folder, followlinks=False):
        for name in sorted(subfolders):
            path = Path(directory) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                left_out.append((path, f"{path}: symbolic link to {path.resolve()}, outside the input folder; not followed."))
        for name in names:
            path = Path(directory) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    left_out.append((path, f"{path}: symbolic link to {target}, outside the input folder; not followed."))
                    continue
            if path.is_file():
                files.append(path)
    return sorted(files), sorted(left_out)


#: Reason prefixes; the input operator files a refusal that starts with one of these as "skipped".
NOT_DICOM = "not a DICOM file"
UNREADABLE = "unreadable DICOM file"
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _dcmread(path: Path, **kwargs) -> Dataset:
    try:  # on a premature end of file pydicom only warns and carries on: read_dicom checks for it
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as exc:
        raise InputRejected(f"{path}: {NOT_DICOM} ({exc}).") from exc
    except Exception as exc:  # pydicom raises many types on truncated/garbled files
        raise InputRejected(f"{path}: {UNREADABLE} ({type(exc).__name__}: {exc}).") from exc


def _short_last_element(ds: Dataset) -> tuple[str, int, int] | None:
    """(keyword or tag, bytes present, bytes declared) when the data set's last element was cut short.

    pydicom reads a value with one ``read(length)`` and keeps whatever came back, so a file cut
    inside a value parses "successfully" with a short last value (often Pixel Data).
    """
    tags = sorted(ds.keys())
    if not tags:
        return None
    raw = ds.get_item(tags[-1])
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes) and isinstance(length, int) and length != _UNDEFINED_LENGTH and len(value) < length:
        tag = tags[-1]
        return (pydicom.datadict.keyword_for_tag(tag) or str(tag)), len(value), length
    return None


def read_dicom(path: Path) -> Dataset:
    """Read a DICOM file (header and pixels); raise InputRejected if it is not DICOM or is truncated.

    Truncation (pydicom itself only warns): a file that ends inside its pixel data is refused with
    "pixel data is truncated"; one that ends inside its header is "unreadable DICOM file (truncated …)".
    """
    ds = _dcmread(path)
    if len(ds) == 0:
        # pydicom drops the whole data set when the file ends inside an undefined-length item
        # (encapsulated pixel data, or a sequence); is the header before the pixel data intact?
        header = _dcmread(path, stop_before_pixels=True)
        if len(header) > 0 and _short_last_element(header) is None:
            raise InputRejected(f"{path}: pixel data is truncated (the file ends inside its encapsulated Pixel Data).")
        raise InputRejected(f"{path}: {UNREADABLE} (truncated or empty: no data element could be read after the file meta "
                            "information).")
    short = _short_last_element(ds)
    if short is not None:
        keyword, present, declared = short
        if keyword == "PixelData":
            raise InputRejected(f"{path}: pixel data is truncated (the file ends {present} bytes into Pixel Data, which "
                                f"declares {declared} bytes).")
        raise InputRejected(f"{path}: {UNREADABLE} (truncated: the file ends {present} bytes into {keyword}, which declares "
                            f"{declared} bytes).")
    return ds


def _uid_name(value: str) -> str:
    """A UID's name for messages: 'CT Image Storage', '1.2.3' or 'absent'."""
    if not value:
        return "absent"
    return repr(UID(value).name or value)


def _value(ds: Dataset, keyword: str, default=None):
    """``ds.get(keyword, default)``; a value pydicom cannot convert raises :class:`_BadElement`.

    pydicom converts raw values lazily, on first access; a garbled value (``IS`` "1e309", a US of
    three bytes, a sequence that does not parse) raises there, with no file name attached. The
    public functions turn :class:`_BadElement` into InputRejected naming the file and the keyword.
    """
    try:
        return ds.get(keyword, default)
    except Exception as exc:
        raise _BadElement(keyword, exc) from exc


class _BadElement(Exception):
    """An element whose value cannot be converted; becomes InputRejected naming the file and keyword."""

    def __init__(self, keyword: str, cause: BaseException):
        super().__init__(keyword, cause)
        self.keyword, self.cause = keyword, cause

    def rejected(self, path: Path) -> InputRejected:
        return InputRejected(f"{path}: {self.keyword} has a value that cannot be read "
                             f"({type(self.cause).__name__}: {self.cause}).")


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword, "")
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute (US, IS); absent or empty gives ``default``; garbage raises _BadElement."""
    value = _value(ds, keyword, default)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, (list, tuple, MultiValue)):
            raise ValueError(f"{len(value)} values where one is expected")
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _BadElement(keyword, exc) from exc


def check_chest_radiograph(ds: Dataset, path: Path) -> list[str]:
    """Raise InputRejected unless ``ds`` is a single-frame frontal chest radiograph of a human.

    Returns warnings (e.g. missing BodyPartExamined) for an accepted file. A value that cannot be
    read at all (garbled bytes) is a refusal naming the element.
    """
    try:
        return _check_chest_radiograph(ds, path)
    except _BadElement as exc:
        raise exc.rejected(path) from exc.cause


def _check_chest_radiograph(ds: Dataset, path: Path) -> list[str]:
    warnings: list[str] = []
    name = str(path)
    modality = _text(ds, "Modality").upper()
    sop_class = _text(ds, "SOPClassUID")
    body_part = _text(ds, "BodyPartExamined").upper()

    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise InputRejected(
            f"{name}: SOP class {_uid_name(sop_class)} is not a radiograph storage class "
            "(expected CR, DX for presentation, or secondary capture)."
        )
    if "PixelData" not in ds:
        raise InputRejected(f"{name}: has no pixel data (SOP class {_uid_name(sop_class)}; the file may be truncated).")
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
    view_codes = _value(ds, "ViewCodeSequence", []) or []
    for item in view_codes if isinstance(view_codes, Sequence) else []:
        meaning = _text(item, "CodeMeaning")
        if _LATERAL_WORDS.search(meaning):
            raise InputRejected(f"{name}: ViewCodeSequence says {meaning!r}; only frontal views are processed.")
    for keyword in _TEXT_FIELDS:
        text = _text(ds, keyword)
        if _LATERAL_WORDS.search(text):
            raise InputRejected(f"{name}: {keyword} {text!r} describes a lateral or oblique view; only frontal views are processed.")
    if not view:
        warnings.append("ViewPosition is absent; assumed frontal.")

    frames = _int(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise InputRejected(f"{name}: has {frames} frames; only single-frame radiographs are processed.")
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputRejected(
            f"{name}: PhotometricInterpretation {photometric or 'absent'!r} with {samples} sample(s) per pixel "
            "is not a greyscale radiograph (expected MONOCHROME1 or MONOCHROME2)."
        )
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if min(rows, cols) < MIN_SIDE_PX:
        raise InputRejected(f"{name}: image is {rows}×{cols} px; the smallest accepted side is {MIN_SIDE_PX} px.")
    if max(rows, cols) > MAX_SIDE_PX:
        raise InputRejected(f"{name}: image is {rows}×{cols} px; the largest accepted side is {MAX_SIDE_PX} px.")
    return warnings


def decode_pixels(ds: Dataset, path: Path, warnings: list[str] | None = None) -> np.ndarray:
    """Decode to float32 H×W in [0, 1], MONOCHROME2 sense; raise InputRejected on failure.

    Order: stored values (Bits Stored honoured by the decoder) → modality LUT / rescale → VOI LUT or
    window (first one) when present → MONOCHROME1 inversion → min-max scaling. A constant image
    (e.g. an all-zero decode) is an error, not an empty image. A VOI LUT or window that cannot be
    applied, or that maps the image to a constant or to NaN, is ignored (the full range is used)
    and a warning is appended to ``warnings`` when given.
    """
    try:
        return _decode_pixels(ds, path, warnings if warnings is not None else [])
    except _BadElement as exc:
        raise exc.rejected(path) from exc.cause


def _decode_pixels(ds: Dataset, path: Path, warnings: list[str]) -> np.ndarray:
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
    try:
        modality = np.asarray(apply_modality_lut(stored, ds))
        values = modality.astype(np.float64)
    except Exception as exc:  # malformed Modality LUT Sequence or rescale values: the HU/OD scale is unknown
        raise InputRejected(f"{name}: the Modality LUT / rescale cannot be applied ({type(exc).__name__}: {exc}).") from exc
    if values.shape != stored.shape:
        raise InputRejected(f"{name}: the Modality LUT / rescale changed the image shape to {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise InputRejected(f"{name}: pixel values include NaN or infinity after the modality LUT / rescale.")
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        problem = None
        try:
            # a VOI LUT Sequence is indexed by the modality values: keep them integers when they are
            integral = modality.dtype.kind in "iu" or bool(np.all(values == np.round(values)))
            voi_input = modality if modality.dtype.kind in "iu" else (values.astype(np.int64) if integral else values)
            windowed = np.asarray(apply_voi_lut(voi_input, ds), dtype=np.float64)
            if windowed.shape != values.shape:
                problem = f"it changed the image shape to {windowed.shape}"
            elif not np.all(np.isfinite(windowed)):
                problem = "it gives NaN or infinity"
            elif float(windowed.min()) >= float(windowed.max()):
                problem = "it maps every pixel to one value"
        except Exception as exc:  # malformed VOI LUT or window
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            values = windowed
        else:
            message = f"VOI LUT / window not applied ({problem}); the full pixel range is used."
            logger.warning("%s: %s", name, message)
            warnings.append(message)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputRejected(f"{name}: pixel data decodes to a constant image (every pixel {low:g}); nothing to analyse.")
    scaled = ((values - low) / (high - low)).astype(np.float32)
    if _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled


def _writable_character_set(header: Dataset, path: Path, warnings: list[str]) -> None:
    """Make ``header``'s SpecificCharacterSet one the writers accept (see KEPT_CHARACTER_SETS)."""
    try:
        raw = _value(header, "SpecificCharacterSet")
    except _BadElement as exc:
        raise exc.rejected(path) from exc.cause
    if raw is None:
        return
    values = [str(v).strip() for v in (raw if isinstance(raw, (list, tuple, MultiValue)) else [raw])]
    spelled = ["ISO 2022 IR 6", *values[1:]] if len(values) > 1 and values[0] == "" else values
    if spelled == values and all(v in KEPT_CHARACTER_SETS for v in values):
        return
    try:
        header.decode()  # every text value to str, with the source's own character set
    except Exception as exc:
        raise InputRejected(f"{path}: text cannot be decoded with SpecificCharacterSet {values!r} ({exc}).") from exc
    if all(v in KEPT_CHARACTER_SETS for v in spelled):
        header.SpecificCharacterSet = spelled
        return
    header.SpecificCharacterSet = "ISO_IR 192"
    if any(v not in pydicom.charset.python_encoding for v in values):
        warnings.append(f"SpecificCharacterSet {values!r} is not a defined term; text was read as the default repertoire "
                        "and the outputs use UTF-8 (ISO_IR 192).")


def check_size_before_pixels(path: Path) -> None:
    """Read only the header and refuse an image too large to decode (Rows/Columns beyond
    :data:`MAX_SIDE_PX`, or more than one frame) before its pixel data is read into memory."""
    header = _dcmread(path, stop_before_pixels=True)
    try:
        rows, cols, frames = _int(header, "Rows", 0), _int(header, "Columns", 0), _int(header, "NumberOfFrames", 1)
    except _BadElement as exc:
        raise exc.rejected(path) from exc.cause
    if max(rows, cols) > MAX_SIDE_PX:
        raise InputRejected(f"{path}: image is {rows}×{cols} px; the largest accepted side is {MAX_SIDE_PX} px.")
    if frames != 1:
        raise InputRejected(f"{path}: has {frames} frames; only single-frame radiographs are processed.")


def load_cxr(path: Path, case_id: str) -> CxrImage:
    """Read, check and decode one file into a :class:`CxrImage`, or raise InputRejected.

    The header is checked for size first (:func:`check_size_before_pixels`), so a huge image is
    refused without its pixel data being read."""
    check_size_before_pixels(path)
    ds = read_dicom(path)
    warnings = check_chest_radiograph(ds, path)
    pixels = decode_pixels(ds, path, warnings)
    try:
        rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    except _BadElement as exc:  # unreachable after check_chest_radiograph; kept for direct callers' sake
        raise exc.rejected(path) from exc.cause
    if pixels.shape != (rows, cols):
        raise InputRejected(f"{path}: decoded {pixels.shape} pixels but the header says {rows}×{cols}.")
    header = ds.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    _writable_character_set(header, path, warnings)
    return CxrImage(case_id=case_id, path=Path(path), dataset=header, pixels=pixels, warnings=tuple(warnings))
