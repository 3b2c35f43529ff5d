"""Fixtures for the training-recipe tests: the committed COVID-QU-Ex subset and RSNA CRs (tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rsna_dir(dicom_dir) -> Path:
    """The five RSNA CRs with the challenge's labels CSV."""
    return dicom_dir / "rsna"


@pytest.fixture(scope="session")
def cqe_subset(cqe_small) -> Path:
    """A COVID-QU-Ex folder in its own layout with 8 COVID-19, 4 Normal and 3 Non-COVID real images."""
    return cqe_small
