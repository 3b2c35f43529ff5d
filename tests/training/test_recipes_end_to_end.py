"""Every recipe end to end on a tiny real subset: train → export → assemble → calibrate → evaluate → the app loads it.

Tiny widths, sizes and epochs (the point is the plumbing and the formats, not the numbers). ~3 minutes on 1 CPU core.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

SPEC = [
    {"name": "clf", "role": "classifier", "architecture": "xrv-densenet121", "input_size_px": 224,
     "options": {"label": "Lung Opacity"}, "note": "tiny test"},
    {"name": "fpn", "role": "expert", "architecture": "convnext-fpn", "input_size_px": 64, "options": {}, "note": "tiny test"},
    {"name": "nn_a", "role": "expert", "architecture": "nnunet-2d", "input_size_px": 64, "options": {"label": "opacity", "fold": 0}, "note": "tiny"},
    {"name": "nn_b", "role": "expert", "architecture": "nnunet-2d", "input_size_px": 64, "options": {"label": "opacity", "fold": 0}, "note": "tiny"},
    {"name": "refine", "role": "refinement", "architecture": "nnunet-2d", "input_size_px": 32, "options": {"label": "opacity", "fold": 0}, "note": "t"},
    {"name": "lung", "role": "lung", "architecture": "small-unet", "input_size_px": 32, "options": {}, "note": "tiny test"},
]
NNUNET = ["--features", "4,8,16", "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--batch-size", "2"]


@pytest.fixture(scope="module")
def trained(cqe_subset, tmp_path_factory):
    from training import crops, nnunet, train_classifier, train_convnext_fpn, train_lung

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("recipes")
    exports, runs, data = root / "exports", root / "runs", str(cqe_subset)
    train_lung.main(["--data", data, "--out", str(exports / "lung"), "--run-dir", str(runs / "lung"), "--size", "32", "--base-channels", "4",
                     "--depth", "2", "--epochs", "1", "--batch-size", "4"])
    train_convnext_fpn.main(["--data", data, "--out", str(exports / "fpn"), "--run-dir", str(runs / "fpn"), "--size", "64", "--dims", "8,16,32,64",
                             "--depths", "1,1,1,1", "--fpn-channels", "8", "--epochs", "1", "--batch-size", "4"])
    nnunet.main(["--data", data, "--work", str(runs / "nn_a"), "--dataset-id", "991", "--name", "A", "--size", "64", "--trainer", "histeq",
                 "--out", str(exports / "nn_a"), *NNUNET])
    nnunet.main(["--data", data, "--work", str(runs / "nn_b"), "--dataset-id", "992", "--name", "B", "--size", "64", "--trainer", "short",
                 "--out", str(exports / "nn_b"), *NNUNET])
    crops.main(["--data", data, "--out", str(runs / "crops")])
    nnunet.main(["--data", str(runs / "crops"), "--work", str(runs / "refine"), "--dataset-id", "993", "--name", "R", "--size", "32",
                 "--trainer", "short", "--out", str(exports / "refine"), *NNUNET])
    train_classifier.main(["--data", data, "--out", str(exports / "clf"), "--run-dir", str(runs / "clf"), "--epochs", "1", "--low-res-epochs", "1",
                           "--low-res", "64", "--batch-size", "4", "--max-val-images", "6"])
    return root, exports, runs


def test_stage_two_pseudo_labels_and_resume(trained, rsna_dir, tmp_path):
    """768 recipe stage two: VinDr-format data → pseudo-labels from stage one refined by boxes → nnU-Net from stage one."""
    import csv
    import shutil

    from training import convert, nnunet, pseudo_labels

    root, exports, runs = trained
    folder = tmp_path / "vindr"
    folder.mkdir()
    for i, dicom in enumerate(sorted(rsna_dir.glob("*.dcm"))[:2]):
        shutil.copy(dicom, folder / f"v{i}.dicom")
    with open(tmp_path / "vindr.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"])
        writer.writerow(["v0", "R1", "Consolidation", 200, 200, 500, 600])
        writer.writerow(["v1", "R2", "No finding", "", "", "", ""])
    convert.main(["vindr", str(folder), str(tmp_path / "vindr.csv"), str(tmp_path / "vindr_common"), "--max-side", "128"])
    pseudo_labels.main(["--model", str(exports / "nn_b"), "--size", "64", "--data", str(tmp_path / "vindr_common"), "--out", str(tmp_path / "pseudo")])
    from training.data import read_common_layout

    pseudo = {r.id: r for r in read_common_layout(tmp_path / "pseudo")}
    from PIL import Image

    mask = np.asarray(Image.open(pseudo["vindr_v0"].mask)) > 0
    assert mask.any() and not mask[:24].any() and not mask[77:].any()  # box rows 25..75 of 128: nothing outside it
    assert not (np.asarray(Image.open(pseudo["vindr_v1"].mask)) > 0).any()
    summary = nnunet.main(["--data", str(tmp_path / "pseudo"), str(root / "runs" / "crops"), "--work", str(tmp_path / "stage2"), "--dataset-id", "994",
                           "--name", "S2", "--size", "64", "--init", str(exports / "nn_b"), "--out", str(tmp_path / "stage2_model"), *NNUNET])
    assert summary["init"] == str(exports / "nn_b")


def test_pack_assemble_calibrate_evaluate_and_app_loads_it(trained, cqe_subset, tmp_path):
    from app.model_store import load_models
    from training import calibrate, evaluate, make_pack

    root, exports, runs = trained
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    models = tmp_path / "models"
    make_pack.main(["assemble", "--exports", str(exports), "--runs", str(runs), "--out", str(models), "--spec", str(spec_path)])
    result = calibrate.main(["--models", str(models), "--data", str(cqe_subset), "--cache", str(tmp_path / "cache")])
    manifest = json.loads((models / "manifest.json").read_text())
    assert 0 <= manifest["calibration"]["gate_threshold"] <= 1
    zones = manifest["calibration"]["zone_values"]
    assert len(zones) == 5 and all(a <= b for a, b in zip(zones, zones[1:]))
    for name in ("fpn", "nn_a", "nn_b", "refine"):
        assert manifest["models"][name]["calibration"]["weighted_logloss"] > 0
    assert set(result["weighted_logloss"]) == {"fpn", "nn_a", "nn_b", "refine"}
    metrics = evaluate.main(["--models", str(models), "--data", str(cqe_subset), "--split", "val", "--out", str(tmp_path / "report"),
                             "--cache", str(tmp_path / "cache")])
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    for picture in ("roc.png", "reliability.png", "dice_histogram.png"):
        assert (tmp_path / "report" / picture).is_file()
    assert {"final: Zones", "final: Weighted", "fpn", "nn_a", "nn_b"} <= set(metrics["maps"])
    make_pack.main(["cards", "--models", str(models), "--runs", str(runs), "--metrics", str(tmp_path / "report" / "metrics.json"), "--spec", str(spec_path)])
    assert "Research use only" in (models / "fpn" / "MODEL_CARD.md").read_text()
    loaded = load_models(models)  # the app's own loader: checksums, formats, fp16 → fp32
    assert [e.name for e in loaded.experts] == ["fpn", "nn_a", "nn_b"]
    assert loaded.manifest.calibration.gate_threshold == manifest["calibration"]["gate_threshold"]
    for name in ("clf", "fpn", "nn_a", "nn_b"):  # every voter's score is calibrated, and the app reads it back
        assert loaded.manifest.calibration.scores[name].to_dict() == manifest["models"][name]["calibration"]["score"]
        assert manifest["models"][name]["calibration"]["score"]["slope"] is not None
    image = np.random.default_rng(0).random((300, 280), dtype=np.float32)
    assert 0 <= loaded.classifier.predict(image) <= 1
    assert loaded.lung.predict_mask(image).shape == image.shape


def test_evaluate_on_rsna_dicoms_with_boxes(trained, rsna_dir, tmp_path):
    from training import evaluate, make_pack

    root, exports, runs = trained
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    make_pack.main(["assemble", "--exports", str(exports), "--runs", str(runs), "--out", str(tmp_path / "models"), "--spec", str(spec_path)])
    metrics = evaluate.main(["--models", str(tmp_path / "models"), "--dicoms", str(rsna_dir), "--boxes", str(rsna_dir / "stage_1_train_labels.csv"),
                             "--out", str(tmp_path / "report"), "--cache", str(tmp_path / "cache")])
    assert metrics["images"] == 5 and metrics["positives"] == 2


def test_convnext_training_input_is_the_apps_prepare():
    """The recipe's batch path (equalise → normalise) equals ConvNextFpnSegmenter.prepare for an unaugmented image."""
    from operators.lib.segmenters import ConvNextFpnSegmenter
    from operators.nets.convnext_fpn import ConvNextFpnConfig
    from training.train_convnext_fpn import equalized_batch, normalize

    config = ConvNextFpnConfig(trunk="convnext_atto", input_size_px=32)
    image = (np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8)
    ours = normalize(torch.from_numpy(equalized_batch(image[None], config))[:, None], config)
    app = ConvNextFpnSegmenter.prepare(image.astype(np.float32) / 255.0, config)
    assert torch.allclose(ours, app, atol=1e-6)
