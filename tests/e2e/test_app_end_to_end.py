"""The whole app in a subprocess on real DICOM files, outputs checked with dciodvfy and highdicom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.support.app_runner import io_args, run_app

pytestmark = pytest.mark.e2e
PROCESSED_NAMES = {"rg1_j2kr.dcm", "nih_dx_sc.dcm", "siim_fake_mono1.dcm"}


def test_mixed_folder_exit_code_and_accounting(mixed_run):
    assert mixed_run.returncode == 0, mixed_run.stderr[-3000:]
    summary = mixed_run.summary
    assert summary["counts"] == {"processed": 5, "refused": 2, "skipped": 1, "failed": 0}
    processed = {Path(r["path"]).name for r in mixed_run.records("processed")}
    assert PROCESSED_NAMES <= processed
    assert summary["preset"] == "zones"
    assert summary["zone_values"] == [0.0, 0.3, 0.5, 0.7, 0.9] and summary["zone_values_source"] == "manifest calibration"
    assert summary["model_pack"]["meaningful"] is False


def test_non_chest_images_are_refused_with_reasons(mixed_run):
    refused = {Path(r["path"]).name: r["reason"] for r in mixed_run.records("refused")}
    assert set(refused) == {"highdicom_dx_image_animal_thorax.dcm", "nhsx_sample_abdomen_OT.dcm"}
    assert "veterinary" in refused["highdicom_dx_image_animal_thorax.dcm"]
    assert "secondary capture" in refused["nhsx_sample_abdomen_OT.dcm"]
    skipped = mixed_run.records("skipped")
    assert [Path(r["path"]).name for r in skipped] == ["README.txt"] and "not a DICOM file" in skipped[0]["reason"]
    assert "nhsx_sample_abdomen_OT.dcm" in mixed_run.stderr  # the log names the file too


def test_every_output_seg_passes_dciodvfy_and_reads_back(mixed_run, dciodvfy_errors):
    for record in mixed_run.records("processed"):
        source = pydicom.dcmread(record["path"], stop_before_pixels=True)
        folder = mixed_run.output / record["case_id"]
        for name, seg_type in (("seg_probability.dcm", "FRACTIONAL"), ("seg_binary.dcm", "BINARY")):
            path = folder / name
            errors = dciodvfy_errors(path)
            assert errors == [], f"{path}: {errors}"
            seg = hd.seg.segread(path)
            assert seg.SegmentationType == seg_type
            assert seg.StudyInstanceUID == source.StudyInstanceUID
            assert seg.SeriesInstanceUID != source.SeriesInstanceUID
            assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
            assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        for name in ("sc_heatmap.dcm", "sr_opacity.dcm"):
            errors = dciodvfy_errors(folder / name)
            assert errors == [], f"{folder / name}: {errors}"
        sc = pydicom.dcmread(folder / "sc_heatmap.dcm")
        assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == source.StudyInstanceUID
        sr = hd.sr.srread(folder / "sr_opacity.dcm")
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert (folder / "preview.png").stat().st_size > 1000


def test_result_json_has_scores_gate_and_timings(mixed_run):
    record = mixed_run.records("processed")[0]
    result = json.loads((mixed_run.output / record["case_id"] / "result.json").read_text())
    assert result["status"] == "processed"
    assert len(result["gate"]["scores"]) == 4
    scores = list(result["gate"]["scores"].values())
    assert result["gate"]["mean_score"] == pytest.approx(np.mean(scores), abs=1e-5)
    assert result["gate"]["decision"] == ("positive" if np.mean(scores) >= result["gate"]["threshold"] else "negative")
    assert {"decode", "blend", "write"} <= set(result["timings_s"])
    assert any(k.startswith("expert:nnunet_2d_768") for k in result["timings_s"])
    assert set(result["models"]) == {"xrv_densenet121_all", "convnext_fpn_clip_336", "nnunet_2d_336", "nnunet_2d_768",
                                     "nnunet_refine_256", "lung_unet_128"}


def test_probability_map_respects_the_lung_prior_floor(mixed_run):
    record = next(r for r in mixed_run.records("processed") if Path(r["path"]).name == "nih_dx_sc.dcm")
    seg = pydicom.dcmread(mixed_run.output / record["case_id"] / "seg_probability.dcm")
    values = seg.pixel_array.astype(np.float32) / float(seg.MaximumFractionalValue)
    assert values.shape == (seg.Rows, seg.Columns)
    assert values.min() >= 0.05 - 1 / 255  # Submission 1 background is 0.05 everywhere


def test_holoscan_environment_variables_and_weighted_preset(tmp_path, dicom_dir, random_pack):
    input_folder = tmp_path / "in"
    input_folder.mkdir()
    shutil.copy(sorted((dicom_dir / "rsna").glob("*.dcm"))[0], input_folder / "a.dcm")
    output = tmp_path / "out"
    env = {"HOLOSCAN_INPUT_PATH": str(input_folder), "HOLOSCAN_OUTPUT_PATH": str(output), "HOLOSCAN_MODEL_PATH": str(random_pack)}
    run = run_app(["--preset", "weighted"], output, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run.summary
    assert summary["counts"]["processed"] == 1 and summary["preset"] == "weighted"
    weights = summary["blend_weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    # manifest log-losses 0.5, 0.4, 0.45, 0.35 → weights ∝ 1/loss
    inverse = {"convnext_fpn_clip_336": 1 / 0.5, "nnunet_2d_336": 1 / 0.4, "nnunet_2d_768": 1 / 0.45, "nnunet_refine_256": 1 / 0.35}
    for name, value in inverse.items():
        assert weights[name] == pytest.approx(value / sum(inverse.values()), rel=1e-6)


def test_corrupt_model_file_stops_before_reading_input(tmp_path, dicom_dir, random_pack):
    pack = tmp_path / "pack"
    shutil.copytree(random_pack, pack)
    weights = pack / "nnunet_2d_336" / "fold_0" / "checkpoint_final.pth"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    input_folder = tmp_path / "in"
    input_folder.mkdir()
    shutil.copy(sorted((dicom_dir / "rsna").glob("*.dcm"))[0], input_folder / "a.dcm")
    output = tmp_path / "out"
    run = run_app(io_args(input_folder, output, pack), output)
    assert run.returncode == 2
    assert "nnunet_2d_336/fold_0/checkpoint_final.pth: sha256" in run.stderr
    assert "Found 1 files" not in run.stderr  # no input was read
    assert not any(output.iterdir())


def test_folder_with_nothing_to_process_exits_3(tmp_path, dicom_dir, random_pack):
    input_folder = tmp_path / "in"
    input_folder.mkdir()
    shutil.copy(dicom_dir / "misc" / "non_chest" / "nhsx_sample_abdomen_OT.dcm", input_folder / "abdomen.dcm")
    output = tmp_path / "out"
    run = run_app(io_args(input_folder, output, random_pack), output)
    assert run.returncode == 3, run.stderr[-2000:]
    assert run.summary["counts"]["refused"] == 1
