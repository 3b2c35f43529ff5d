"""End-to-end fixtures: one app run over a folder of real DICOMs of every kind (and non-images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.app_runner import AppProcess, io_args, run_app


@pytest.fixture(scope="session")
def mixed_input(tmp_path_factory, dicom_dir) -> Path:
    """Real chest CRs/DXs of every kind we accept, two non-chest images and a non-DICOM file."""
    folder = tmp_path_factory.mktemp("mixed_input")
    rsna = sorted((dicom_dir / "rsna").glob("*.dcm"))
    for path in rsna[1:3]:
        shutil.copy(path, folder / path.name)
    shutil.copy(dicom_dir / "misc" / "nema_wg04_RG1_J2KR.dcm", folder / "rg1_j2kr.dcm")
    nested = folder / "nested" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(next((dicom_dir / "misc").glob("nih_*.dcm")), nested / "nih_dx_sc.dcm")
    shutil.copy(dicom_dir / "misc" / "modified_header" / "siim_Fake_MONOHR1.dcm", folder / "siim_fake_mono1.dcm")
    for path in (dicom_dir / "misc" / "non_chest").glob("*.dcm"):
        shutil.copy(path, folder / path.name)
    (folder / "README.txt").write_text("not a DICOM file\n")
    return folder


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory, mixed_input, random_pack) -> AppProcess:
    output = tmp_path_factory.mktemp("mixed_output")
    return run_app(io_args(mixed_input, output, random_pack), output)
