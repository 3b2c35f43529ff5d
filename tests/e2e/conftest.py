"""End-to-end fixtures: a random model pack in the real formats, and a runner for ``python -m app``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"


@dataclass
class AppRun:
    returncode: int
    stdout: str
    stderr: str
    output: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.output / "summary.json").read_text())

    def records(self, outcome: str) -> list[dict]:
        return [r for r in self.summary["files"] if r["outcome"] == outcome]


@pytest.fixture(scope="session")
def shared_dicom() -> Path:
    if not SHARED_DICOM.is_dir():
        pytest.skip("shared/data/dicom is not beside the checkout")
    return SHARED_DICOM


@pytest.fixture(scope="session")
def random_pack(tmp_path_factory) -> Path:
    """A complete models folder of tiny random models (real on-disk formats), built by repo code."""
    from tools.random_model_pack import build_random_pack

    return build_random_pack(tmp_path_factory.mktemp("models") / "pack")


def run_app(args: list[str], output: Path, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600) -> AppRun:
    """Run ``python -m app`` in a subprocess exactly as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" -m app "$@"', sys.executable, *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout)
    return AppRun(proc.returncode, proc.stdout, proc.stderr, output)


@pytest.fixture(scope="session")
def mixed_input(tmp_path_factory, shared_dicom) -> Path:
    """Real chest CRs/DXs of every kind we accept, two non-chest images and a non-DICOM file."""
    folder = tmp_path_factory.mktemp("mixed_input")
    rsna = sorted((shared_dicom / "rsna").glob("*.dcm"))
    for path in rsna[1:3]:
        shutil.copy(path, folder / path.name)
    shutil.copy(shared_dicom / "misc" / "nema_wg04_RG1_J2KR.dcm", folder / "rg1_j2kr.dcm")
    nested = folder / "nested" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(next((shared_dicom / "misc").glob("nih_*.dcm")), nested / "nih_dx_sc.dcm")
    shutil.copy(shared_dicom / "misc" / "modified_header" / "siim_Fake_MONOHR1.dcm", folder / "siim_fake_mono1.dcm")
    for path in (shared_dicom / "misc" / "non_chest").glob("*.dcm"):
        shutil.copy(path, folder / path.name)
    (folder / "README.txt").write_text("not a DICOM file\n")
    return folder


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory, mixed_input, random_pack) -> AppRun:
    output = tmp_path_factory.mktemp("mixed_output")
    return run_app(["-i", str(mixed_input), "-o", str(output), "-m", str(random_pack)], output)
