"""Load: 200 studies in one run all complete, memory stays flat after warm-up, and summary.json
accounts for every input file.

Each study is an RSNA CR downsized to 256² with its own patient, study, series and SOP Instance
UIDs (tests/reliability/cases.py:study_copy). Resident memory of the app (and any children) is
sampled every 0.25 s together with the number of results published so far; the growth from the
warm-up window (results 20–39) to the end (results 180+) must stay under MEMORY_GROWTH_LIMIT.
About 2 minutes on two CPU cores with the 128-px random pack: marked ``load`` (deselect with
``-m "not load"``), but part of the default run and of CI.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from operators.lib.run_report import ExitCode
from tests.support import cases
from tests.support.app_runner import RESULT_FILES, check_result_folder, hidden_entries, io_args, run_app

pytestmark = [pytest.mark.e2e, pytest.mark.load]
STUDIES = 200
WARM_UP = (20, 40)  # results published: the window memory is measured in after warm-up
END_FROM = 180
MEMORY_GROWTH_LIMIT = 150 * 2**20


@pytest.fixture(scope="module")
def load_run(tmp_path_factory, dicom_dir, model_pack):
    folder = tmp_path_factory.mktemp("load_input")
    for index in range(STUDIES):
        cases.study_copy(dicom_dir, index, folder / f"study_{index:03d}.dcm", size=256)
    output = tmp_path_factory.mktemp("load_output")
    run = run_app(io_args(folder, output, model_pack), output, timeout=900)
    return folder, run


def test_every_study_completes_and_is_accounted_for(load_run):
    folder, run = load_run
    assert run.returncode == ExitCode.OK, run.stderr[-3000:]
    summary = run.summary
    assert summary["counts"] == {"processed": STUDIES, "refused": 0, "skipped": 0, "failed": 0}
    inputs = sorted(str(p) for p in folder.iterdir())
    assert sorted(r["path"] for r in summary["files"]) == inputs
    case_ids = [r["case_id"] for r in summary["files"]]
    assert len(set(case_ids)) == STUDIES
    for record in summary["files"]:
        listed = {Path(p).name for p in record["outputs"]}
        assert RESULT_FILES <= listed
        assert {p.name for p in (run.output / record["case_id"]).iterdir()} == listed
    for record in summary["files"][::25]:  # a sample read back whole
        check_result_folder(run.output / record["case_id"])
    assert hidden_entries(run.output) == []


def test_memory_is_flat_after_warm_up(load_run):
    _, run = load_run
    warm = [rss for _, rss, done in run.samples if WARM_UP[0] <= done < WARM_UP[1]]
    end = [rss for _, rss, done in run.samples if done >= END_FROM]
    assert len(warm) >= 5 and len(end) >= 5, f"too few samples: {len(warm)} warm, {len(end)} end"
    warm_rss, end_rss = statistics.median(warm), statistics.median(end)
    after_warm_up = [rss for _, rss, done in run.samples if done >= WARM_UP[0]]
    print(f"\n{STUDIES} studies in {run.summary['seconds']:.0f} s; RSS after warm-up {warm_rss / 2**20:.0f} MiB, "
          f"at the end {end_rss / 2**20:.0f} MiB (growth {(end_rss - warm_rss) / 2**20:+.0f} MiB), "
          f"peak after warm-up {max(after_warm_up) / 2**20:.0f} MiB, peak overall {run.peak_rss / 2**20:.0f} MiB")
    assert end_rss - warm_rss < MEMORY_GROWTH_LIMIT
    assert max(after_warm_up) - warm_rss < 2 * MEMORY_GROWTH_LIMIT
