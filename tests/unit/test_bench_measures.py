"""The benchmark's steady-state time per study, from result.json's computed_at and the outputs' times."""

from datetime import datetime, timezone

import pytest

from bench.bench import computed_times, steady_study_seconds


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def test_steady_time_runs_from_the_first_image_computed_to_the_last_output():
    # four studies leave the models every 1.5 s from t = 100; the writer lags and writes the last two in a burst
    results = [{"computed_at": _at(100.0 + 1.5 * k)} for k in range(4)]
    outputs = [100.3, 103.4, 104.8, 105.1]
    assert steady_study_seconds(computed_times(results), outputs) == pytest.approx((105.1 - 100.0) / 3, abs=1e-3)
    # the median interval between these outputs (1.4 s) would hide the lag; the window does not
    assert (steady_study_seconds(computed_times(list(reversed(results))), outputs[::-1])
            == steady_study_seconds(computed_times(results), outputs))


def test_steady_time_needs_two_studies_and_their_stamps():
    assert steady_study_seconds(computed_times([{"computed_at": _at(1.0)}]), [2.0]) is None
    assert steady_study_seconds(computed_times([{}, {}]), [2.0, 3.0]) is None
    assert steady_study_seconds(computed_times([{"computed_at": None}, {"computed_at": _at(1.0)}]), [2.0, 4.0]) == pytest.approx(3.0)
