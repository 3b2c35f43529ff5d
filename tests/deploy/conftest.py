"""Deployment fixtures: a random model pack (real on-disk formats) and a small real-DICOM input folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def deploy_models(random_pack) -> Path:
    """The repo's models/ when it holds a manifest, else the random pack (what the MAP is built with)."""
    repo_models = Path(__file__).resolve().parents[2] / "models"
    return repo_models if (repo_models / "manifest.json").is_file() else random_pack


@pytest.fixture(scope="session")
def two_studies(dicom_dir, tmp_path_factory) -> Path:
    """Two real chest radiographs from two studies: an RSNA CR (JPEG baseline) and the NIH DX secondary capture."""
    folder = tmp_path_factory.mktemp("two_studies")
    for path in (next(dicom_dir.glob("rsna/00436515-*.dcm")), next(dicom_dir.glob("misc/nih_*.dcm"))):
        shutil.copy(path, folder / path.name)
        (folder / path.name).chmod(0o644)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def orthanc_factory(tmp_path_factory):
    """Start throw-away Orthancs (tests/deploy/orthanc.py); skip only when Orthanc is not installed."""
    from tests.support.orthanc import Orthanc, find_orthanc

    executable = find_orthanc()
    if executable is None:
        pytest.skip("Orthanc is not installed (tools/setup.sh installs the Debian package orthanc)")
    started: list[Orthanc] = []

    def start(modalities: dict[str, tuple[str, int]]) -> Orthanc:
        server = Orthanc(tmp_path_factory.mktemp("orthanc"), modalities)
        server.start(executable)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


#: Why the container tests skip where no engine is installed (a prefix tests/conftest.py's ALLOWED_SKIPS accepts).
NO_ENGINE = "needs a container engine (podman or docker; tools/setup.sh installs podman where it has root and apt-get)"


@pytest.fixture(scope="session")
def container_engine():
    """podman (runc, cgroupfs) or docker; skip where neither is installed, fail where one is but cannot run."""
    from deploy.build_image import engine_unavailable_reason, find_engine

    engine = find_engine()
    if engine is None:
        pytest.skip(NO_ENGINE)
    reason = engine_unavailable_reason(engine)
    assert reason is None, reason  # installed but broken: a failure, not a quiet skip
    return engine


@pytest.fixture(scope="session")
def map_image(container_engine, deploy_models, tmp_path_factory) -> dict:
    """The MAP image built once per run by ``deploy.build_image`` (the engine's layer cache makes a rebuild
    with unchanged requirements take the app layers only); its record, plus ``context`` (the build context)."""
    from deploy.build_image import build_image

    context = tmp_path_factory.mktemp("map_image") / "context"
    record = build_image(context, deploy_models, engine=container_engine)
    return {**record, "context": context}
