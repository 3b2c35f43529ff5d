"""Reliability fixtures: the generated bad-input folder and one app run over it.

The app runs in a subprocess exactly as a user runs it (:mod:`tests.support.app_runner`), on the
fast random pack (``fast_pack``: nnU-Nets at 128 px) so that many studies fit in CI's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import cases
from tests.support.app_runner import AppProcess, io_args, run_app


@pytest.fixture(scope="session")
def model_pack(fast_pack) -> Path:
    """The pack the reliability tests run with: ``fast_pack`` (what they check does not depend on sizes)."""
    return fast_pack


@pytest.fixture(scope="session")
def bad_input(tmp_path_factory, dicom_dir) -> tuple[Path, list[cases.Case]]:
    """Every generated case in one folder (sub-folders included)."""
    folder = tmp_path_factory.mktemp("bad_input")
    return folder, cases.write_cases(folder, dicom_dir)


@pytest.fixture(scope="session")
def bad_input_run(tmp_path_factory, bad_input, model_pack) -> AppProcess:
    """ONE app run over the whole bad-input folder; every test of test_bad_input.py reads its results."""
    folder, _ = bad_input
    output = tmp_path_factory.mktemp("bad_input_output")
    return run_app(io_args(folder, output, model_pack), output, timeout=900)
