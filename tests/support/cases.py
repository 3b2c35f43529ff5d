"""A factory of bad (and awkward but valid) inputs, generated from the real DICOMs of the ``dicom_dir`` fixture.

Every case is written into ONE input folder by :func:`write_cases`, which returns the list of
:class:`Case` records: the file's path relative to the folder, the outcome the app must report in
``summary.json`` (``processed``, ``refused`` or ``skipped``) and, for a refusal, a regular
expression the reason must match (besides naming the file). The tests run the app once on the
whole folder and check every record; the generators are deterministic (fixed UIDs and seeds).

Sources: an RSNA Pneumonia Challenge CR (JPEG baseline, 1024², MONOCHROME2) and the NEMA WG04
RG1 CR (uncompressed, 16-bit allocated / 15 stored, MONOCHROME1, 1955×1841).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SegmentationStorage,
    generate_uid,
)

UID_PREFIX = "1.2.826.0.1.3680043.10.1404."  # deterministic test UIDs: generate_uid(prefix, entropy)
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class Case:
    """One generated input file and what the app must do with it."""

    name: str  # path relative to the input folder
    outcome: str  # processed | refused | skipped
    reason: str | None = None  # regex the summary reason must match (refused/skipped)
    what: str = ""  # one line for humans (test ids, failure messages)


def uid(*entropy: str) -> str:
    """A stable UID for a test object."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=list(entropy))


def rsna_files(dicom_dir: Path) -> list[Path]:
    return sorted((dicom_dir / "rsna").glob("*.dcm"))


def rg1_file(dicom_dir: Path) -> Path:
    return dicom_dir / "misc" / "nema_wg04_RG1_UNCR.dcm"


def new_identity(ds: Dataset, key: str, *, study: bool = True) -> Dataset:
    """Give ``ds`` its own SOP Instance UID (and series, and study unless ``study`` is False)."""
    ds.SOPInstanceUID = uid(key, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = uid(key, "series")
    if study:
        ds.StudyInstanceUID = uid(key, "study")
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, *, bits_stored: int | None = None) -> Dataset:
    """Replace the pixel data with an uncompressed single-sample frame (uint8 or uint16)."""
    pixels = np.ascontiguousarray(pixels)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PixelData = pixels.tobytes()
    for keyword in ("NumberOfFrames", "PlanarConfiguration", "LossyImageCompression"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def resized(pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resize that keeps the dtype (uint8 or uint16)."""
    image = Image.fromarray(pixels.astype(np.float32)).resize((cols, rows), Image.BILINEAR)
    return np.clip(np.rint(np.asarray(image)), 0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)


def rsna(dicom_dir: Path, index: int = 0) -> Dataset:
    return pydicom.dcmread(rsna_files(dicom_dir)[index])


def rsna_uncompressed(dicom_dir: Path, index: int = 0, size: int | None = None) -> Dataset:
    """An RSNA CR decoded to native 8-bit pixels, optionally resized to size × size."""
    ds = rsna(dicom_dir, index)
    pixels = ds.pixel_array
    if size is not None:
        pixels = resized(pixels, size, size)
    return set_pixels(ds, pixels)


def save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --- the cases ---------------------------------------------------------------------------------

def _not_dicom(src: Path, out: Path) -> None:
    out.write_text("Patient list, exported from the RIS.\nNot a DICOM file.\n")


def _empty(src: Path, out: Path) -> None:
    out.write_bytes(b"")


def _truncated_header(src: Path, out: Path) -> None:
    out.write_bytes(rsna_files(src)[0].read_bytes()[:700])  # ends inside the data set, long before Pixel Data


def _truncated_pixels_native(src: Path, out: Path) -> None:
    ds = new_identity(rsna_uncompressed(src, 1), "truncated_native")
    save(ds, out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - len(ds.PixelData) // 2])


def _truncated_pixels_jpeg(src: Path, out: Path) -> None:
    data = rsna_files(src)[1].read_bytes()
    out.write_bytes(data[: int(len(data) * 0.7)])


def _corrupt_jpeg(src: Path, out: Path) -> None:
    """Encapsulation intact, JPEG stream garbage: the decoder must fail (or the file be refused)."""
    ds = new_identity(rsna(src, 2), "corrupt_jpeg")
    from pydicom.encaps import encapsulate, generate_fragments

    fragments = list(generate_fragments(ds.PixelData))
    frame = b"".join(fragments)
    rng = np.random.default_rng(6)
    garbage = frame[:20] + rng.integers(0, 256, len(frame) - 20, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([garbage])
    save(ds, out)


def _missing_pixels(src: Path, out: Path) -> None:
    ds = new_identity(rsna(src, 2), "missing_pixels")
    del ds.PixelData
    save(ds, out)


def _constant(src: Path, out: Path) -> None:
    ds = new_identity(rsna_uncompressed(src, 2, size=512), "constant")
    set_pixels(ds, np.full((512, 512), 77, np.uint8))
    save(ds, out)


def _ct_slice(src: Path, out: Path) -> None:
    ds = new_identity(rsna_uncompressed(src, 3, size=512), "ct")
    pixels = (ds.pixel_array.astype(np.uint16) * 8)
    set_pixels(ds, pixels, bits_stored=12)
    ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.FrameOfReferenceUID = uid("ct", "for")
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    save(ds, out)


def _sr(src: Path, out: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = uid("sr", "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("sr", "study"), uid("sr", "series")
    ds.Modality = "SR"
    ds.PatientName, ds.PatientID = "Report^Only", "SR-1"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "Chest PA: no acute findings."
    ds.ContentSequence = Sequence([item])
    save(ds, out)


def _seg(src: Path, out: Path) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = new_identity(rsna_uncompressed(src, 3, size=256), "seg_source")
    source.PatientAge = "051Y"
    mask = np.zeros((1, 256, 256), dtype=bool)
    mask[0, 64:192, 64:192] = True
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Lung", segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Lung, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=uid("seg", "series"), series_number=9,
        sop_instance_uid=uid("seg", "sop"), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")
    assert seg.SOPClassUID == SegmentationStorage
    seg.save_as(out)


def _header_edit(index: int, key: str, **edits: object) -> Callable[[Path, Path], None]:
    """An RSNA CR, byte-for-byte pixels, with header edits (value None deletes the attribute)."""

    def build(src: Path, out: Path) -> None:
        ds = new_identity(rsna(src, index), key)
        for keyword, value in edits.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        save(ds, out)

    return build


def _tiny(src: Path, out: Path) -> None:
    ds = new_identity(rsna_uncompressed(src, 0, size=16), "tiny")
    save(ds, out)


def huge_pixels(src: Path, side: int = 6000) -> np.ndarray:
    """The RSNA CR upscaled to side × side, as 12-bit values in uint16."""
    base = rsna(src, 4).pixel_array.astype(np.uint16) * 16  # 8 → 12 bits
    return resized(base, side, side)


def _huge(src: Path, out: Path) -> None:
    ds = new_identity(rsna(src, 4), "huge")
    set_pixels(ds, huge_pixels(src), bits_stored=12)
    ds.PixelSpacing = [0.05, 0.05]
    save(ds, out)


def voi_lut_table(first: int, entries: int, bits: int = 16) -> np.ndarray:
    """A non-linear (gamma) VOI LUT over ``entries`` stored values starting at ``first``."""
    x = np.linspace(0.0, 1.0, entries)
    return np.round((x**0.6) * (2**bits - 1)).astype(np.uint16)


def _mono1_voi_lut(src: Path, out: Path) -> None:
    """The RG1 CR (16-bit allocated, 15 stored, MONOCHROME1) with a real VOI LUT Sequence."""
    ds = new_identity(pydicom.dcmread(rg1_file(src)), "mono1_voi")
    stored = ds.pixel_array
    low, high = int(np.percentile(stored, 1)), int(np.percentile(stored, 99))
    table = voi_lut_table(low, high - low + 1)
    item = Dataset()
    item.LUTDescriptor = [len(table), low, 16]
    item.LUTExplanation = "gamma 0.6 over 1-99 percentile"
    item.LUTData = table.tolist()
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    for keyword in ("WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    ds.PixelSpacing = [0.2, 0.2]  # RG1's "0.000" would be dropped anyway
    save(ds, out)


def _multiframe_dx(src: Path, out: Path) -> None:
    ds = new_identity(rsna_uncompressed(src, 0, size=512), "multiframe")
    frame = ds.pixel_array
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame[::-1]]).tobytes()
    save(ds, out)


def _rgb(src: Path, out: Path) -> None:
    ds = new_identity(rsna_uncompressed(src, 1, size=512), "rgb")
    grey = ds.pixel_array
    rgb = np.stack([grey, grey // 2, grey], axis=-1)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()
    save(ds, out)


def _patient(index: int, key: str, name: str, charset: str | list[str], patient_id: str, study_key: str | None = None):
    """An RSNA CR as a study of another patient, with a name in another character set."""

    def build(src: Path, out: Path) -> None:
        ds = new_identity(rsna(src, index), key, study=False)
        ds.StudyInstanceUID = uid(study_key or key, "study")
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.PatientID = patient_id
        ds.StudyDescription = "Thorax p.a."
        save(ds, out)

    return build


def _duplicate(index: int) -> Callable[[Path, Path], None]:
    def build(src: Path, out: Path) -> None:
        ds = new_identity(rsna(src, index), "duplicate")  # same SOP Instance UID for both files
        save(ds, out)

    return build


#: name → (builder, expected outcome, reason regex, description); reasons are matched with re.search
CASES: list[tuple[str, Callable[[Path, Path], None], str, str | None, str]] = [
    ("not_dicom.txt", _not_dicom, "skipped", r"not a DICOM file", "a text file"),
    ("empty.dcm", _empty, "skipped", r"not a DICOM file", "a zero-byte file"),
    ("truncated_header.dcm", _truncated_header, "skipped", r"unreadable DICOM file \(truncated", "a CR cut inside its header"),
    ("truncated_pixels_native.dcm", _truncated_pixels_native, "refused", r"pixel data is truncated",
     "an uncompressed CR cut inside its pixel data"),
    ("truncated_pixels_jpeg.dcm", _truncated_pixels_jpeg, "refused", r"pixel data is truncated",
     "a JPEG CR cut inside its encapsulated pixel data"),
    ("corrupt_jpeg.dcm", _corrupt_jpeg, "refused", r"pixel data cannot be decoded|constant image", "garbage JPEG bytes"),
    ("missing_pixels.dcm", _missing_pixels, "refused", r"has no pixel data", "a CR without Pixel Data"),
    ("constant.dcm", _constant, "refused", r"constant image", "every pixel the same"),
    ("ct_slice.dcm", _ct_slice, "refused", r"SOP class 'CT Image Storage' is not a radiograph", "a CT slice"),
    ("report_sr.dcm", _sr, "refused", r"SOP class 'Basic Text SR Storage' is not a radiograph", "a structured report"),
    ("segmentation.dcm", _seg, "refused", r"SOP class 'Segmentation Storage' is not a radiograph", "a DICOM SEG"),
    ("lateral.dcm", _header_edit(0, "lateral", ViewPosition="LL"), "refused", r"ViewPosition is 'LL'", "a lateral view"),
    ("knee.dcm", _header_edit(0, "knee", BodyPartExamined="KNEE"), "refused", r"BodyPartExamined is 'KNEE', not a chest",
     "a knee CR"),
    ("tiny_16x16.dcm", _tiny, "refused", r"16×16 px; the smallest accepted side is 256", "a 16×16 image"),
    ("huge_6000x6000.dcm", _huge, "processed", None, "6000×6000 uncompressed 16-bit MONOCHROME2"),
    ("mono1_voi_lut.dcm", _mono1_voi_lut, "processed", None, "16-bit MONOCHROME1 with a VOI LUT Sequence"),
    ("no_photometric.dcm", _header_edit(0, "no_photometric", PhotometricInterpretation=None), "refused",
     r"PhotometricInterpretation 'absent'", "no PhotometricInterpretation"),
    ("no_pixel_spacing.dcm", _header_edit(1, "no_spacing", PixelSpacing=None), "processed", None, "no PixelSpacing"),
    ("no_patient_orientation.dcm", _header_edit(2, "no_orientation", PatientOrientation=None), "processed", None,
     "no PatientOrientation"),
    ("duplicate_uid_1.dcm", _duplicate(3), "processed", None, "SOP Instance UID shared with duplicate_uid_2"),
    ("duplicate_uid_2.dcm", _duplicate(4), "processed", None, "SOP Instance UID shared with duplicate_uid_1"),
    ("multiframe_dx.dcm", _multiframe_dx, "refused", r"has 2 frames", "a two-frame DX"),
    ("rgb.dcm", _rgb, "refused", r"PhotometricInterpretation 'RGB' with 3 sample", "an RGB image"),
    ("patients/a_study1_latin1.dcm", _patient(0, "pa1", "Müller^Zoë", "ISO_IR 100", "PAT-A", "study-a1"), "processed", None,
     "patient A, study 1, Latin-1 name"),
    ("patients/a_study2_latin1.dcm", _patient(1, "pa2", "Müller^Zoë", "ISO_IR 100", "PAT-A", "study-a2"), "processed", None,
     "patient A, study 2"),
    ("patients/Παπαδοπούλου_utf8.dcm", _patient(2, "pb", "Παπαδοπούλου^Ελένη", "ISO_IR 192", "PAT-B"), "processed", None,
     "patient B, Greek name in UTF-8, non-ASCII file name"),
    ("patients/c_iso2022_jis.dcm", _patient(3, "pc", "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "PAT-C"),
     "processed", None, "patient C, Japanese name in ISO 2022 IR 87"),
    ("patients/d_utf8_japanese.dcm", _patient(4, "pd", "山田^花子", "ISO_IR 192", "PAT-D"), "processed", None,
     "patient D, Japanese name in UTF-8"),
    ("patients/e_iso2022_korean.dcm", _patient(0, "pe", "Hong^Gildong=洪^吉洞=홍^길동", ["", "ISO 2022 IR 149"], "PAT-E"),
     "processed", None, "patient E, Korean name in ISO 2022 IR 149 (a set highdicom cannot write)"),
    ("patients/f_unknown_charset.dcm", _patient(1, "pf", "Doe^Jane", "ISO_IR 999", "PAT-F"), "processed", None,
     "patient F, an undefined SpecificCharacterSet"),
]


def write_cases(folder: Path, dicom_dir: Path) -> list[Case]:
    """Write every case under ``folder``; return their expectations."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, build, outcome, reason, what in CASES:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        build(dicom_dir, path)
        cases.append(Case(name, outcome, reason, what))
    return cases


def study_copy(dicom_dir: Path, index: int, out: Path, size: int = 256) -> Path:
    """The ``index``-th load-test study: an RSNA CR, downsized, with its own study/series/SOP UIDs."""
    sources = rsna_files(dicom_dir)
    ds = rsna_uncompressed(dicom_dir, index % len(sources), size=size)
    new_identity(ds, f"load-{index}")
    ds.PatientID = f"LOAD-{index:04d}"
    ds.AccessionNumber = f"L{index:04d}"
    save(ds, out)
    return out


def copy_dataset(ds: Dataset) -> Dataset:
    return copy.deepcopy(ds)
