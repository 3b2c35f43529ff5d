"""A golden regression test on the committed reference pack: the bundled example CR's final map.

The random test packs cannot show a preprocessing or loading regression in real weights (their outputs
mean nothing); this test can. The stored map is the FRACTIONAL SEG's values (round(p × 255)) written by
``python -m tests.support.golden``.

Tolerance, and why: the map is a Zones blend, so every pixel takes one of a few levels, and a pixel
moves to the next level when one expert's probability crosses 0.5. Torch's CPU kernels sum in an order
that depends on the thread count and the instruction set, which moves probabilities by ~1e-6, so a
handful of pixels that sit on 0.5 can change level on another machine. A regression (a wrong resize,
a lost histogram equalisation, weights read in the wrong precision or order) moves thousands of pixels
and the score. So: at most 0.2 % of pixels may differ, the mean absolute difference stays below 0.002
(in probability), and the gate's mean score within 1e-3 with the same decision.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.golden import GOLDEN, REPO, run_example

pytestmark = pytest.mark.e2e


def test_example_final_map_matches_the_golden_file(tmp_path):
    from training.pipeline import models_key

    golden = np.load(GOLDEN)
    assert str(golden["models_key"]) == models_key(REPO / "models"), (
        "models/ changed since the golden file was written: check the new pack's map, then run python -m tests.support.golden")
    stored, result = run_example(REPO / "models", tmp_path / "out")
    expected = golden["stored"]
    assert stored.shape == expected.shape
    differ = stored != expected
    assert differ.mean() <= 0.002, f"{differ.sum()} pixels differ"
    assert np.abs(stored.astype(float) - expected.astype(float)).mean() / 255 < 0.002
    assert result["gate"]["mean_score"] == pytest.approx(float(golden["mean_score"]), abs=1e-3)
    assert result["gate"]["decision"] == str(golden["decision"])
