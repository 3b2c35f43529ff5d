"""Fixtures for the training-recipe tests: small real subsets of ../shared/data (skipped when absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
CQE = SHARED / "COVID-QU-Ex" / "Infection Segmentation Data" / "Train"
RSNA = SHARED / "dicom" / "rsna"


@pytest.fixture(scope="session")
def cqe_root() -> Path:
    if not CQE.is_dir():
        pytest.skip(f"{CQE} is not there (shared data beside the checkout)")
    return CQE


@pytest.fixture(scope="session")
def rsna_dir() -> Path:
    if not (RSNA / "stage_1_train_labels.csv").is_file():
        pytest.skip(f"{RSNA} is not there (shared data beside the checkout)")
    return RSNA


@pytest.fixture(scope="session")
def cqe_subset(cqe_root, tmp_path_factory) -> Path:
    """A COVID-QU-Ex folder in its own layout with 8 COVID-19, 4 Normal and 3 Non-COVID real images."""
    out = tmp_path_factory.mktemp("cqe_subset")
    for cls, count in (("COVID-19", 8), ("Normal", 4), ("Non-COVID", 3)):
        names = sorted(p.name for p in (cqe_root / cls / "images").glob("*.png"))[:count]
        for sub in ("images", "infection masks", "lung masks"):
            (out / cls / sub).mkdir(parents=True)
            for name in names:
                shutil.copy(cqe_root / cls / sub / name, out / cls / sub / name)
    return out
