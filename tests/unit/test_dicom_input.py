"""DICOM input rules and pixel decoding, on the real files of the ``dicom_dir`` fixture (tests/data)."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from operators.lib.dicom_input import check_chest_radiograph, decode_pixels, find_input_files, load_cxr, read_dicom
from operators.lib.errors import InputRejected


@pytest.fixture(scope="module")
def DICOM(dicom_dir) -> Path:  # noqa: N802 (reads like the folder it is)
    return dicom_dir


def test_rsna_cr_decodes_to_unit_range(DICOM):
    path = sorted((DICOM / "rsna").glob("*.dcm"))[0]
    cxr = load_cxr(path, "case")
    assert cxr.shape == (1024, 1024)
    assert cxr.pixels.dtype == np.float32
    assert cxr.pixels.min() == 0.0 and cxr.pixels.max() == 1.0
    assert "PixelData" not in cxr.dataset


@pytest.mark.parametrize("name", ["UNCR", "J2KR"])
def test_monochrome1_rg1_is_inverted_so_lungs_are_dark(name, DICOM):
    cxr = load_cxr(DICOM / "misc" / f"nema_wg04_RG1_{name}.dcm", "rg1")
    rows, cols = cxr.shape
    # MONOCHROME2 sense after inversion: the mediastinum (centre column) is brighter than the lung fields
    centre = cxr.pixels[rows // 3 : 2 * rows // 3, cols // 2 - 40 : cols // 2 + 40].mean()
    lungs = np.mean([cxr.pixels[rows // 3 : 2 * rows // 3, c - 40 : c + 40].mean() for c in (cols // 4, 3 * cols // 4)])
    assert centre > lungs + 0.05


def test_jpeg2000_lossless_decodes_as_an_independent_decoder_does(DICOM):
    """The app's decoder (pylibjpeg-openjpeg) gives the pixels Pillow's JPEG 2000 decoder gives."""
    from pydicom.pixels import pixel_array

    path = DICOM / "misc" / "nema_wg04_RG1_J2KR.dcm"
    np.testing.assert_array_equal(pixel_array(path, decoding_plugin="pylibjpeg"), pixel_array(path, decoding_plugin="pillow"))
    a = load_cxr(DICOM / "misc" / "nema_wg04_RG1_UNCR.dcm", "a").pixels  # the fixture's uncompressed copy
    np.testing.assert_array_equal(a, load_cxr(path, "b").pixels)


def test_jpeg2000_lossy_is_close_to_lossless_but_not_equal(DICOM):
    lossless = load_cxr(DICOM / "misc" / "nema_wg04_RG1_J2KR.dcm", "a").pixels
    lossy = load_cxr(DICOM / "misc" / "nema_wg04_RG1_J2KI.dcm", "b").pixels
    assert lossy.shape == lossless.shape and not np.array_equal(lossy, lossless)
    assert float(np.abs(lossy - lossless).mean()) < 0.02


def test_nih_dx_secondary_capture_is_accepted_with_warnings(DICOM):
    path = next((DICOM / "misc").glob("nih_*.dcm"))
    cxr = load_cxr(path, "nih")
    assert any("BodyPartExamined is absent" in w for w in cxr.warnings)
    assert any("ViewPosition is absent" in w for w in cxr.warnings)


def test_abdomen_secondary_capture_is_refused_with_its_name(DICOM):
    path = DICOM / "misc" / "non_chest" / "nhsx_sample_abdomen_OT.dcm"
    with pytest.raises(InputRejected, match=r"nhsx_sample_abdomen_OT\.dcm: Modality OT secondary capture"):
        load_cxr(path, "x")


def test_animal_thorax_is_refused(DICOM):
    path = DICOM / "misc" / "non_chest" / "highdicom_dx_image_animal_thorax.dcm"
    with pytest.raises(InputRejected, match=r"highdicom_dx_image_animal_thorax\.dcm: .*veterinary"):
        load_cxr(path, "x")


def test_non_dicom_file_is_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputRejected, match="notes.txt: not a DICOM file"):
        read_dicom(path)


def _rsna_header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted((folder / "rsna").glob("*.dcm"))[0])


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"ViewPosition": "LL"}, "ViewPosition is 'LL'"),
        ({"Modality": "CT"}, "Modality is 'CT'"),
        ({"BodyPartExamined": "ABDOMEN"}, "BodyPartExamined is 'ABDOMEN'"),
        ({"SeriesDescription": "CHEST LATERAL"}, "lateral or oblique"),
        ({"PatientSpeciesDescription": "Canis lupus familiaris"}, "only human"),
        ({"NumberOfFrames": 3}, "has 3 frames"),
        ({"Rows": 16, "Columns": 16}, "16×16 px"),
    ],
)
def test_header_rules_refuse_with_a_reason(edit, message, tmp_path, DICOM):
    ds = _rsna_header(DICOM)
    for keyword, value in edit.items():
        setattr(ds, keyword, value)
    with pytest.raises(InputRejected, match=message):
        check_chest_radiograph(ds, tmp_path / "x.dcm")


def test_constant_image_is_an_error_not_an_empty_image(tmp_path, DICOM):
    ds = pydicom.dcmread(DICOM / "misc" / "nema_wg04_RG1_UNCR.dcm")
    ds.PixelData = bytes(len(ds.PixelData))
    with pytest.raises(InputRejected, match="constant image"):
        decode_pixels(ds, tmp_path / "zero.dcm")


def test_find_input_files_is_recursive_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.dcm").write_bytes(b"x")
    (tmp_path / "1.dcm").write_bytes(b"x")
    files, left_out = find_input_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["1.dcm", "b/2.dcm"] and left_out == []


def test_symbolic_links_out_of_the_input_folder_are_not_followed(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "elsewhere"
    (inside / "sub").mkdir(parents=True)
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.dcm").write_bytes(b"x")
    (outside / "deep" / "more.dcm").write_bytes(b"x")
    (inside / "sub" / "own.dcm").write_bytes(b"x")
    (inside / "link_out.dcm").symlink_to(outside / "secret.dcm")
    (inside / "folder_out").symlink_to(outside / "deep", target_is_directory=True)
    (inside / "link_in.dcm").symlink_to(inside / "sub" / "own.dcm")
    files, left_out = find_input_files(inside)
    assert [p.relative_to(inside).as_posix() for p in files] == ["link_in.dcm", "sub/own.dcm"]
    assert [p.name for p, _ in left_out] == ["folder_out", "link_out.dcm"]
    assert all("outside the input folder" in reason and str(outside) in reason for _, reason in left_out)


def test_an_oversized_image_is_refused_from_its_header_before_pixel_data_is_read(tmp_path, DICOM, monkeypatch):
    import operators.lib.dicom_input as dicom_input

    ds = pydicom.dcmread(sorted((DICOM / "rsna").glob("*.dcm"))[0])
    ds.Rows = 9000
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(dicom_input.pydicom, "dcmread", lambda *a, **k: reads.append(k.get("stop_before_pixels", False)) or real(*a, **k))
    with pytest.raises(InputRejected, match="9000×1024 px; the largest accepted side is 8192"):
        load_cxr(path, "x")
    assert reads == [True]  # the header only


@pytest.mark.parametrize("syntax_name", ["JPEGLSLossless", "RLELossless", "JPEG2000Lossless"])
def test_lossless_transfer_syntaxes_decode_to_the_uncompressed_pixels(syntax_name, tmp_path, DICOM):
    import pydicom.uid

    source = DICOM / "misc" / "nema_wg04_RG1_UNCR.dcm"
    ds = pydicom.dcmread(source)
    ds.compress(getattr(pydicom.uid, syntax_name))
    path = tmp_path / f"rg1_{syntax_name}.dcm"
    ds.save_as(path)
    np.testing.assert_array_equal(load_cxr(path, "x").pixels, load_cxr(source, "y").pixels)


def test_jpeg_lossless_process14_decodes(tmp_path, DICOM):
    """JPEG Lossless (process 14, SV1) as CR archives send it, encoded by dcmtk's dcmcjpeg when present."""
    import shutil
    import subprocess

    encoder = shutil.which("dcmcjpeg")
    if encoder is None:
        pytest.skip("dcmtk's dcmcjpeg is not installed")
    source = DICOM / "misc" / "nema_wg04_RG1_UNCR.dcm"
    path = tmp_path / "rg1_jpeg_lossless.dcm"
    subprocess.run([encoder, "+e1", str(source), str(path)], check=True, capture_output=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(load_cxr(path, "x").pixels, load_cxr(source, "y").pixels)
