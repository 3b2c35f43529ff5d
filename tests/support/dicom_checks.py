"""dciodvfy and the real sources every output builder is checked against."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

#: the single-frame CR / DX / SC sources of ``dicom_dir`` the output builders are run on (glob patterns)
SOURCES = {
    "rsna-0004": "rsna/0004cfab-*.dcm",
    "rsna-003d": "rsna/003d8fa0-*.dcm",
    "rsna-0043": "rsna/00436515-*.dcm",
    "rsna-0070": "rsna/00704310-*.dcm",
    "rsna-0094": "rsna/009482dc-*.dcm",
    "nema-rg1-uncr": "misc/nema_wg04_RG1_UNCR.dcm",
    "nih-dx-sc": "misc/nih_*.dcm",
}

#: dciodvfy warnings that are accepted: all come from the source's patient/study attributes, which
#: are copied unchanged (empty StudyID / StudyDate / StudyTime; names without a "^").
ALLOWED_WARNINGS = (
    re.compile(r"needed to build DICOMDIR - (Study ID|Study Date|Study Time)$"),
    re.compile(r"\((0x0010,0x0010|0x0008,0x0090)\) PN .* - Retired Person Name form$"),
)


def read_header(path: Path):
    """Read a source the way the app passes it on: whole file read, then PixelData deleted."""
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    return ds


def dciodvfy_lines(dciodvfy: str, path: Path) -> list[str]:
    """Everything dciodvfy prints about ``path``."""
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    return (result.stdout + result.stderr).splitlines()


def unexpected_dciodvfy_findings(dciodvfy: str, path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines not in ALLOWED_WARNINGS)."""
    lines = dciodvfy_lines(dciodvfy, path)
    errors = [line for line in lines if "Error" in line]
    warnings = [line for line in lines if line.startswith("Warning") and not any(p.search(line) for p in ALLOWED_WARNINGS)]
    return errors, warnings
