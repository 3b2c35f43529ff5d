"""bench/gpu_bench: the GPU bench's method is the app's, and its script runs end to end (on CPU, toy size).

The lent GPU machine has no holoscan, so the bench replays the app's per-study work through the
functions the operators call. These tests pin that it is the same work: the gate decision, mean
score and final map of a study equal those of ``python -m app`` on the same DICOM and pack; and that
``bench/gpu_bench.sh`` runs as CI can run it (``PROFILES=random``, ``--device cpu``) and writes its report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.support.app_runner import io_args, run_app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def one_cr(dicom_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_bench_in")
    source = next(dicom_dir.glob("rsna/00436515-*.dcm"))
    shutil.copy(source, folder / source.name)
    return folder / source.name


def test_the_bench_replays_the_apps_method(one_cr, random_pack, tmp_path):
    import torch

    from app.model_store import load_models
    from app.presets import get_preset
    from bench.gpu_bench import one_study
    from operators.lib.calibration import resolve

    # one torch thread on both sides: another thread count changes the maps' last bits, and a Zones map
    # turns that into a whole zone step wherever an expert pixel sits at the mask threshold
    out = tmp_path / "out"
    app = run_app(io_args(one_cr.parent, out, random_pack, "--runtime", "torch", "--threads", "1"), out, timeout=600)
    assert app.returncode == 0, app.proc.stderr.read()[-3000:] if app.proc.stderr else ""
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    result = json.loads((case / "result.json").read_text())

    preset = get_preset("zones")
    loaded = load_models(random_pack, "cpu", preset.nnunet_mirroring, preset.nnunet_tile_step, runtime="torch")
    settings = resolve(preset, loaded.manifest.calibration, loaded.map_names)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            study = one_study(one_cr, loaded, settings)
    finally:
        torch.set_num_threads(threads)
    assert study["positive"] == (result["gate"]["decision"] == "positive")
    assert study["mean_score"] == pytest.approx(result["gate"]["mean_score"], abs=1e-5)
    seg = pydicom.dcmread(case / "seg_probability.dcm")
    stored = seg.pixel_array.astype(np.float32) / float(seg.MaximumFractionalValue)
    # the SEG stores the map in 1/255 steps (rounded): one step is the tolerance
    assert np.max(np.abs(stored - study["final"])) <= 1 / 255 + 1e-6


def test_compare_reports_each_maps_largest_difference():
    from bench.gpu_bench import compare

    maps = {"a": np.zeros((4, 4), np.float32), "b": np.ones((4, 4), np.float32)}
    reference = {"classifier": 0.5, "final": np.zeros((4, 4), np.float32), "lung": np.zeros((4, 4), bool), "positive": True, "maps": maps}
    other = {"classifier": 0.25, "final": np.full((4, 4), 0.1, np.float32), "lung": np.eye(4, dtype=bool), "positive": False,
             "maps": {"a": np.full((4, 4), 0.002, np.float32), "b": np.ones((4, 4), np.float32)}}
    diff = compare(reference, other)
    assert diff["classifier"] == pytest.approx(0.25) and diff["final"] == pytest.approx(0.1)
    assert diff["a"] == pytest.approx(0.002) and diff["b"] == 0.0
    assert diff["lung_pixels_differ"] == pytest.approx(4 / 16) and diff["gate_agrees"] == 0.0


def test_gpu_bench_script_runs_at_toy_size_on_cpu(tmp_path):
    env = {**os.environ, "PROFILES": "random", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_bench.sh"), "", "--device", "cpu", "--studies", "1", "--repeats", "1",
                           "--precisions", "fp32,bf16", "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "gpu-random-on-cpu.json").read_text())
    assert list(report["precisions"]) == ["fp32", "bf16"] and report["studies"] == 1
    fp32 = report["precisions"]["fp32"]
    assert fp32["within_tolerance"] and all(value == 0.0 for key, value in fp32["max_diff_vs_fp32"].items() if key != "gate_agrees")
    assert report["recommended"] in ("fp32", "bf16") and report["goal_s"] == 0.5
    assert "Recommended:" in (tmp_path / "results" / "gpu-random-on-cpu.md").read_text()
