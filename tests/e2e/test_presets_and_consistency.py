"""The app under all three presets with a pack whose calibration differs from every default, and every
output of every case checked against the others: a one-line wiring bug (a calibration value ignored,
a pass swapped, a decision inverted, two segments swapped) fails here.

The pack is the fast random pack with its own Zones values, Weighted log-losses, a score map for two
voters, and a gate threshold placed — by the app's own step functions, run here in-process on the
same images — in the widest gap between the studies' mean scores, so that some studies come out
positive and some negative.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from app.presets import PRESETS, get_preset
from operators.lib.case_outputs import caption
from operators.lib.sc_output import NOT_FOR_DIAGNOSTIC_USE, SC_MAX_SIDE_PX, burn_text
from tests.support.app_runner import io_args, run_app

pytestmark = pytest.mark.e2e
ZONES = (0.03, 0.52, 0.64, 0.81, 0.93)
LOSSES = {"convnext_fpn_clip_336": 0.61, "nnunet_2d_336": 0.27, "nnunet_2d_768": 0.44, "nnunet_refine_256": 0.35}
SCORES = {"nnunet_2d_336": {"feature": "area", "parameter": 0.5, "slope": 0.9, "intercept": 2.5},
          "xrv_densenet121_all": {"feature": "classifier", "parameter": 0.0, "slope": 1.5, "intercept": -0.3}}


def _mean_scores(pack: Path, folder: Path) -> dict[str, float]:
    """Each image's gate mean, by the app's own loaders and step functions (the pack's calibration)."""
    from app.model_store import load_models
    from operators.lib.calibration import resolve
    from operators.lib.dicom_input import load_cxr
    from operators.lib.segmenters import predict_expert
    from operators.lib.steps import classifier_score, expert_score, gate

    models = load_models(pack)
    settings = resolve(get_preset("zones"), models.manifest.calibration, models.map_names)
    out = {}
    for path in sorted(folder.glob("*.dcm")):
        image = load_cxr(path, path.stem).pixels
        scores = [classifier_score(models.classifier.predict(image), settings.score(models.classifier.name, classifier=True))]
        scores += [expert_score(predict_expert(e, image)[0], settings.score(e.name)) for e in models.experts]
        out[path.name] = gate(scores, 0.5).mean_score
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, dicom_dir) -> Path:
    folder = tmp_path_factory.mktemp("preset_inputs")
    for path in sorted((dicom_dir / "rsna").glob("*.dcm")):
        shutil.copy(path, folder / path.name)
    shutil.copy(next((dicom_dir / "misc").glob("nih_*.dcm")), folder / "nih.dcm")
    return folder


@pytest.fixture(scope="module")
def pack(tmp_path_factory, inputs) -> tuple[Path, float]:
    """(the calibrated pack, its gate threshold): between the studies' mean scores, in their widest gap."""
    from tools.random_model_pack import build_random_pack

    pack = build_random_pack(tmp_path_factory.mktemp("calibrated_pack") / "pack", nnunet_px=128,
                             calibration={"zone_values": list(ZONES)},
                             model_calibration={name: {"weighted_logloss": loss} for name, loss in LOSSES.items()}
                             | {name: {**({"weighted_logloss": LOSSES[name]} if name in LOSSES else {}), "score": score}
                                for name, score in SCORES.items()})
    means = sorted(_mean_scores(pack, inputs).values())
    gaps = [(b - a, (a + b) / 2) for a, b in zip(means, means[1:])]
    width, threshold = max(gaps)
    assert width > 1e-3, f"the random pack scores every image alike ({means}); no threshold separates them"
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["calibration"]["gate_threshold"] = round(threshold, 6)
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert abs(threshold - 0.5) > 0.05  # the app's default threshold would give other decisions
    return pack, round(threshold, 6)


@pytest.fixture(scope="module", params=sorted(PRESETS))
def preset_run(request, tmp_path_factory, inputs, pack):
    output = tmp_path_factory.mktemp(f"preset_{request.param}")
    run = run_app(io_args(inputs, output, pack[0], "--preset", request.param), output, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return request.param, run


def _cases(run) -> list[tuple[Path, dict]]:
    return [(run.output / r["case_id"], json.loads((run.output / r["case_id"] / "result.json").read_text())) for r in run.records("processed")]


def test_run_uses_the_packs_calibration(preset_run, pack):
    name, run = preset_run
    summary = run.summary
    assert summary["counts"]["processed"] == 6 and summary["gate_threshold"] == pack[1]
    assert summary["gate_threshold_source"] == "manifest calibration" and summary["scores_source"] == "manifest calibration"
    assert summary["scores"]["nnunet_2d_336"]["feature"] == "area"
    if get_preset(name).blend.value == "zones":
        assert summary["zone_values"] == list(ZONES) and summary["zone_values_source"] == "manifest calibration"
    else:
        inverse = {k: 1 / v for k, v in LOSSES.items()}
        assert summary["blend_weights"] == pytest.approx({k: v / sum(inverse.values()) for k, v in inverse.items()})


def test_gate_decisions_follow_the_threshold_and_both_occur(preset_run, pack):
    _, run = preset_run
    decisions = []
    for _, result in _cases(run):
        gate = result["gate"]
        assert gate["threshold"] == pack[1]
        assert gate["mean_score"] == pytest.approx(np.mean(list(gate["scores"].values())), abs=1e-5)
        assert gate["decision"] == ("positive" if gate["mean_score"] >= gate["threshold"] else "negative")
        decisions.append(gate["decision"])
    assert {"positive", "negative"} <= set(decisions), decisions


def _segment(seg: hd.seg.Segmentation, source_uid: str, number: int) -> np.ndarray:
    return seg.get_pixels_by_source_instance([source_uid], segment_numbers=[number], rescale_fractional=False)[0][..., 0]


def test_outputs_agree_with_each_other(preset_run):
    name, run = preset_run
    preset = get_preset(name)
    prior = preset.lung_prior
    for folder, result in _cases(run):
        source_uid = result["source"]["sop_instance_uid"]
        positive = result["gate"]["decision"] == "positive"
        probability = hd.seg.segread(folder / "seg_probability.dcm")
        binary = hd.seg.segread(folder / "seg_binary.dcm")
        bands = hd.seg.segread(folder / "seg_bands.dcm")
        stored = _segment(probability, source_uid, 1).astype(int)  # round(p × 255)
        p = stored / 255.0
        # BINARY segment 1 is "Opacity" = map ≥ 0.5 (one quantisation step of slack), segment 2 "Lung"
        assert [binary.get_segment_description(n).segment_label for n in (1, 2)] == ["Opacity", "Lung"]
        assert binary.get_segment_description(1).segmented_property_type.value == "112001"
        assert binary.get_segment_description(2).segmented_property_type.value == "39607008"
        opacity = _segment(binary, source_uid, 1).astype(bool)
        clear = np.abs(p - preset.binary_threshold) > 1 / 255
        np.testing.assert_array_equal(opacity[clear], (p >= preset.binary_threshold)[clear], err_msg=str(folder))
        assert result["final"]["opacity_fraction"] == pytest.approx(opacity.mean(), abs=1e-6)
        lung = _segment(binary, source_uid, 2).astype(bool)
        assert result["final"]["lung_fraction"] == pytest.approx(lung.mean(), abs=1e-6)
        # the lung prior: inside the lungs never below the study's lung value; outside, at least the background
        assert (p[lung] >= (prior.lung_value_positive if positive else prior.lung_value_negative) - 1 / 255).all()
        assert p.min() >= (prior.background_positive if positive else prior.background_negative) - 1 / 255
        # bands: the same map in exclusive bands
        for number, (low, high) in enumerate(((0.5, 0.75), (0.75, 0.9), (0.9, 1.01)), start=1):
            band = _segment(bands, source_uid, number).astype(bool)
            inside = (p >= low) & (p < high)
            away = (np.abs(p - low) > 1 / 255) & (np.abs(p - high) > 1 / 255)
            np.testing.assert_array_equal(band[away], inside[away], err_msg=f"{folder} band {number}")
        # the map's levels are the zone values and the lung prior's values (Zones), the prior alone (negative)
        levels = set(np.unique(stored).tolist())
        prior_levels = {prior.lung_value_negative, prior.background_positive if positive else prior.background_negative}
        if positive:
            prior_levels.add(prior.lung_value_positive)
            if preset.blend.value == "zones":
                allowed = {round(255 * v) for v in (*ZONES, *prior_levels)}
                assert levels <= allowed, (folder, sorted(levels), sorted(allowed))
        else:
            assert levels <= {round(255 * v) for v in prior_levels}, (folder, sorted(levels))
            assert not opacity.any()


def test_sr_and_sc_carry_the_gate_of_result_json(preset_run):
    name, run = preset_run
    for folder, result in _cases(run):
        gate = result["gate"]
        positive = gate["decision"] == "positive"
        sr = hd.sr.srread(folder / "sr_opacity.dcm")
        score_group = sr.content.get_image_measurement_groups()[0]
        assert score_group.tracking_identifier == "Lung opacity score"
        assert score_group.get_measurements(name=codes.DCM.Probability)[0].value == pytest.approx(gate["mean_score"], abs=1e-6)
        decision = score_group.get_qualitative_evaluations(name=codes.DCM.Opacity)[0].value
        assert decision.value == (codes.SCT.Present.value if positive else codes.SCT.Absent.value)
        sc = pydicom.dcmread(folder / "sc_heatmap.dcm")
        line = caption(gate["mean_score"], positive, gate["threshold"], name)
        assert sc.DerivationDescription.endswith(f"Burned-in caption: {line}")
        # the band burned into the picture is exactly that caption's rendering (the picture below it is the
        # source scaled to at most SC_MAX_SIDE_PX, so its height — and so the band's — is known)
        rows, cols = result["source"]["rows"], result["source"]["columns"]
        scale = min(1.0, SC_MAX_SIDE_PX / max(rows, cols))
        picture = np.zeros((max(1, round(rows * scale)), sc.Columns, 3), np.uint8)
        lines = [NOT_FOR_DIAGNOSTIC_USE, f"Lung opacity heat map - cxr-lung-opacity {run.summary['app']['version']} - research use only", line]
        expected, band = burn_text(picture, lines)
        assert band == sc.Rows - picture.shape[0]
        np.testing.assert_array_equal(sc.pixel_array[:band], expected[:band])
