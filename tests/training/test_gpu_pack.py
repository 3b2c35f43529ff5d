"""The GPU training command, run here at toy size on the CPU (the same script, the same steps), and the
carry it is shipped with."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_gpu_pack_command_trains_calibrates_and_writes_a_loadable_pack(cqe_small, tmp_path):
    from app.model_store import load_models

    runs, out = tmp_path / "runs", tmp_path / "models"
    proc = subprocess.run(["bash", "training/gpu_pack.sh", str(cqe_small), str(runs), str(out), "--toy"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"xrv_densenet121_opacity", "convnext_fpn_336", "nnunet_2d_336_histeq", "nnunet_2d_768",
                                       "nnunet_refine_256", "lung_unet_256"}
    assert "gate_threshold" in manifest["calibration"] and len(manifest["calibration"]["zone_values"]) == 5
    for name in ("xrv_densenet121_opacity", "convnext_fpn_336", "nnunet_2d_336_histeq", "nnunet_2d_768"):
        assert manifest["models"][name]["calibration"]["score"]["slope"] is not None
    assert (runs / "report" / "metrics.json").is_file() and (out / "nnunet_2d_768" / "MODEL_CARD.md").is_file()
    models = load_models(out)
    assert [e.input_size_px for e in models.experts] == [64, 64, 96]  # the toy sizes reached the pack


def test_carry_round_trips_the_data_set(cqe_small, tmp_path):
    from training.data import read_covid_qu_ex
    from training.gpu_bundle import bundle_data, unpack_data

    npz = bundle_data(cqe_small, tmp_path / "carry")
    back = unpack_data(npz, tmp_path / "data")
    original, restored = read_covid_qu_ex(cqe_small), read_covid_qu_ex(back)
    assert [(r.id, r.cls, r.split, r.label) for r in original] == [(r.id, r.cls, r.split, r.label) for r in restored]
    for a, b in zip(original, restored):
        image_a, image_b = (np.asarray(Image.open(r.image).convert("L"), np.int16) for r in (a, b))
        assert np.abs(image_a - image_b).mean() < 2.0  # JPEG q85: within a grey level or two
        if a.mask is not None:
            np.testing.assert_array_equal(np.asarray(Image.open(a.mask)) > 127, np.asarray(Image.open(b.mask)) > 127)
