"""Property-based fuzzing of the DICOM loader (hypothesis): mutated headers and mangled bytes.

Bases are small real radiographs (RSNA CR 256² native and RLE, JPEG 2000 lossless; the NEMA RG1
16-bit MONOCHROME1 CR at 320×300). Each example edits 1–4 header elements — deleted, given a
plausible or hostile typed value, or raw garbage bytes (written as UN, so the reader converts them
with the dictionary VR) — or corrupts/truncates the serialised file, then runs the whole loader
(:func:`load_cxr`: read → check → decode) on the file.

The only acceptable outcomes are a valid :class:`CxrImage` or :class:`InputRejected` whose
message names the file. Any other exception is a loader bug.

Runs are deterministic (``derandomize=True``, no example database). ``RELIABILITY_FUZZ_EXAMPLES``
raises the example count for a longer local session.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from operators.lib.dicom_input import CxrImage, load_cxr
from operators.lib.errors import InputRejected
from tests.support import cases

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom warns on every invalid value


class Example:
    """A mutated file; its repr (shown by hypothesis on failure) is what was done, not the bytes."""

    def __init__(self, base: str, data: bytes, done: list[str]):
        self.base, self.data, self.done = base, data, done

    def __repr__(self) -> str:
        return f"Example({self.base!r}, {len(self.data)} bytes, {self.done!r})"

HEADER_EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "1000"))
BYTE_EXAMPLES = max(HEADER_EXAMPLES // 3, 100)

# Elements the loader reads or that change how pixels are read, and a few it only copies.
KEYWORDS = (
    "Modality", "SOPClassUID", "BodyPartExamined", "ViewPosition", "PatientSpeciesDescription", "SeriesDescription",
    "StudyDescription", "ProtocolName", "PhotometricInterpretation", "SamplesPerPixel", "PlanarConfiguration", "Rows",
    "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction", "PixelSpacing",
    "PatientOrientation", "SpecificCharacterSet", "PatientName", "SOPInstanceUID", "PixelPaddingValue",
    "SmallestImagePixelValue", "LargestImagePixelValue", "ViewCodeSequence", "VOILUTSequence", "ModalityLUTSequence",
    "PixelData",
)
TEXT_VALUES = ("", "PA", "AP", "LL", "LATERAL", "CHEST", "KNEE", "CR", "DX", "OT", "CT", "MONOCHROME1", "MONOCHROME2",
               "RGB", "YBR_FULL_422", "PALETTE COLOR", "SIGMOID", "LINEAR_EXACT", "HU", "Canis lupus", "1.2.840.10008.5.1.4.1.1.1",
               "1.2.840.10008.5.1.4.1.1.2", "ISO_IR 192", "ISO 2022 IR 87", "ISO_IR 999", "\\", "0", "-1", "1e309", "nan",
               "inf", "Müller^Zoë", "山田^太郎")
INT_VALUES = (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 64, 255, 256, 299, 300, 320, 8193, 32767, 65535)
TRANSFER_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit, RLELossless, JPEG2000Lossless,
                     "1.2.3.4", "")


def _base_files(dicom_dir: Path) -> dict[str, bytes]:
    """Serialised small real radiographs the examples start from."""
    out: dict[str, bytes] = {}
    native = cases.new_identity(cases.rsna_uncompressed(dicom_dir, 0, size=256), "fuzz-native")
    rle = cases.new_identity(cases.rsna_uncompressed(dicom_dir, 1, size=256), "fuzz-rle")
    rle.compress(RLELossless)
    j2k = cases.new_identity(cases.rsna_uncompressed(dicom_dir, 2, size=256), "fuzz-j2k")
    j2k.compress(JPEG2000Lossless)
    rg1 = pydicom.dcmread(cases.rg1_file(dicom_dir))
    cases.set_pixels(rg1, cases.resized(rg1.pixel_array, 320, 300), bits_stored=15)
    cases.new_identity(rg1, "fuzz-rg1")
    for name, ds in (("native", native), ("rle", rle), ("j2k", j2k), ("rg1", rg1)):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out[name] = buffer.getvalue()
    return out


BASES: dict[str, bytes] = {}  # filled by the module fixture below, read by the strategies at draw time
WORKDIR: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _bases_and_workdir(tmp_path_factory, dicom_dir):
    BASES.update(_base_files(dicom_dir))
    WORKDIR.append(tmp_path_factory.mktemp("fuzz"))
    yield
    BASES.clear()
    WORKDIR.clear()


def _raw_element(tag: int, raw: bytes) -> DataElement:
    """An element written as UN with these exact bytes; the reader converts them with the dictionary VR."""
    element = DataElement(tag, "OB", raw)
    element.VR = "UN"
    return element


def _lut_item(draw) -> Dataset:
    item = Dataset()
    entries = draw(st.sampled_from([0, 1, 2, 256, 4096]))
    item.LUTDescriptor = [entries, draw(st.sampled_from([0, 1, 100, 65535])), draw(st.sampled_from([0, 8, 12, 16, 17]))]
    item["LUTDescriptor"].VR = "US"
    size = draw(st.sampled_from([0, 1, 2, 256, 4096]))
    item.LUTData = [int(v) for v in np.linspace(0, 65535, size)][::-1 if draw(st.booleans()) else 1]
    item["LUTData"].VR = "US"
    if draw(st.booleans()):
        item.ModalityLUTType = "OD"
    return item


def _typed_value(draw, keyword: str):
    kind = draw(st.sampled_from(["text", "int", "float", "multi", "random_text"]))
    if keyword in ("VOILUTSequence", "ModalityLUTSequence"):
        return Sequence([_lut_item(draw) for _ in range(draw(st.integers(0, 2)))])
    if keyword == "ViewCodeSequence":
        item = Dataset()
        item.CodeMeaning = draw(st.sampled_from(["postero-anterior", "lateral", "", "left lateral decubitus"]))
        return Sequence([item])
    if keyword == "PixelData":
        return draw(st.binary(min_size=0, max_size=64))
    if kind == "text":
        return draw(st.sampled_from(TEXT_VALUES))
    if kind == "int":
        return draw(st.sampled_from(INT_VALUES))
    if kind == "float":
        return draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-30, -1.0, 1e30])))
    if kind == "multi":
        return draw(st.lists(st.one_of(st.sampled_from(INT_VALUES), st.sampled_from(["1", "0", "-5", "x"])), min_size=0, max_size=3))
    return draw(st.text(max_size=24))


@st.composite
def mutated_header_files(draw) -> Example:
    """(base name, file bytes, what was done) with 1–4 header elements edited."""
    base = draw(st.sampled_from(sorted(BASES)))
    ds = pydicom.dcmread(io.BytesIO(BASES[base]))
    done: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        keyword = draw(st.sampled_from(KEYWORDS + ("TransferSyntaxUID",)))
        action = draw(st.sampled_from(["delete", "typed", "typed", "raw"]))
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(TRANSFER_SYNTAXES))
            done.append(f"TransferSyntaxUID={ds.file_meta.TransferSyntaxUID!r}")
            continue
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if action == "delete":
            if keyword in ds:
                del ds[keyword]
            done.append(f"del {keyword}")
        elif action == "typed":
            value = _typed_value(draw, keyword)
            try:
                setattr(ds, keyword, value)
                done.append(f"{keyword}={value!r}"[:120])
            except Exception:  # pydicom refuses this value for this VR: write its text as raw bytes instead
                ds[tag] = _raw_element(tag, str(value).encode("utf-8", "replace")[:64])
                done.append(f"{keyword}=UN{value!r}"[:120])
        else:
            raw = draw(st.binary(min_size=0, max_size=24))
            ds[tag] = _raw_element(tag, raw)
            done.append(f"{keyword}=UN{raw!r}")
    buffer = io.BytesIO()
    explicit_le = ds.file_meta.get("TransferSyntaxUID") not in (ImplicitVRLittleEndian, ExplicitVRBigEndian)
    try:
        if explicit_le:
            ds.save_as(buffer, implicit_vr=False, little_endian=True)
        else:
            ds.save_as(buffer)
    except Exception:  # a value pydicom cannot encode at all: no such file can exist; use the base
        return Example(base, BASES[base], done + ["(unencodable; unmodified base)"])
    return Example(base, buffer.getvalue(), done)


@st.composite
def mangled_files(draw) -> Example:
    """(base name, file bytes, what was done) with bytes flipped/overwritten or the file truncated."""
    base = draw(st.sampled_from(sorted(BASES)))
    data = bytearray(BASES[base])
    header_end = data.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data tag, little endian
    header_end = header_end if header_end > 0 else len(data)
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) File Meta Information Group Length
    start = draw(st.sampled_from([128, meta_end, meta_end]))  # mostly the data set, sometimes the file meta too
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "overwrite", "truncate"]))
        if how == "truncate":
            cut = draw(st.integers(0, len(data)))
            del data[cut:]
            done.append(f"truncate@{cut}")
            break
        where = draw(st.integers(start, max(header_end - 1, start)))
        if how == "flip":
            data[where:where + 1] = bytes([data[where] ^ draw(st.integers(1, 255))]) if where < len(data) else b""
            done.append(f"flip@{where}")
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[where:where + len(chunk)] = chunk
            done.append(f"overwrite@{where}:{chunk!r}")
    return Example(base, bytes(data), done)


def _check_outcome(data: bytes, done: list[str]) -> None:
    path = WORKDIR[0] / "mutated.dcm"
    path.write_bytes(data)
    try:
        image = load_cxr(path, "fuzz")
    except InputRejected as exc:
        assert str(path) in str(exc), f"refusal does not name the file: {exc}"
        event("refused: " + re.sub(r"[\d'\"(].*", "", str(exc)[len(str(path)) + 2:])[:40])
        return
    except Exception as exc:  # the bug this test exists to find
        raise AssertionError(f"load_cxr raised {type(exc).__name__}: {exc}\nafter {done}") from exc
    event("image" + (" with warnings" if image.warnings else ""))
    assert isinstance(image, CxrImage)
    assert image.pixels.dtype == np.float32 and image.pixels.ndim == 2, done
    assert image.pixels.shape == (int(image.dataset.Rows), int(image.dataset.Columns)), done
    low, high = float(image.pixels.min()), float(image.pixels.max())
    assert math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high <= 1.0, (low, high, done)
    assert "PixelData" not in image.dataset


FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def test_bases_load_cleanly():
    assert set(BASES) == {"native", "rle", "j2k", "rg1"}
    for name, data in BASES.items():
        path = WORKDIR[0] / f"base_{name}.dcm"
        path.write_bytes(data)
        image = load_cxr(path, name)
        assert image.pixels.shape in ((256, 256), (320, 300))


@settings(max_examples=HEADER_EXAMPLES, **FUZZ_SETTINGS)
@given(mutated_header_files())
def test_mutated_headers_give_an_image_or_a_clean_refusal(example):
    _check_outcome(example.data, [example.base, *example.done])


@settings(max_examples=BYTE_EXAMPLES, **FUZZ_SETTINGS)
@given(mangled_files())
def test_mangled_bytes_give_an_image_or_a_clean_refusal(example):
    _check_outcome(example.data, [example.base, *example.done])
