"""A pack's calibration as the manifest states it (validated when read), and the run plan and its report."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.presets import get_preset
from operators.lib.calibration import (
    SCORE_FEATURES,
    UNCALIBRATED_CLASSIFIER,
    UNCALIBRATED_EXPERT,
    Calibration,
    ScoreCalibration,
    ScoreFeature,
    feature_index,
    resolve,
)
from operators.lib.errors import ModelFolderError

WHERE = "manifest.json"


def test_calibration_reads_every_field():
    calibration = Calibration.from_manifest(
        {"gate_threshold": 0.42, "zone_values": [0, 0.5, 0.6, 0.7, 0.8]},
        {"a": {"weighted_logloss": 0.3, "score": {"feature": "area", "parameter": 0.5, "slope": 2, "intercept": -1}},
         "k": {"score": {"feature": "classifier", "parameter": 0}}, "b": {}}, WHERE)
    assert calibration.gate_threshold == 0.42 and calibration.zone_values == (0.0, 0.5, 0.6, 0.7, 0.8)
    assert calibration.weighted_logloss == {"a": 0.3}
    assert calibration.scores["a"] == ScoreCalibration(ScoreFeature.AREA, 0.5, 2.0, -1.0)
    assert calibration.scores["k"] == ScoreCalibration(ScoreFeature.CLASSIFIER, 0.0)
    assert Calibration.from_manifest({}, {}, WHERE) == Calibration()


@pytest.mark.parametrize("pack, models, match", [
    ({"gate_threshold": 1.5}, {}, r"calibration.gate_threshold must be a finite number in \[0.0, 1.0\]"),
    ({"gate_threshold": "x"}, {}, "calibration.gate_threshold must be a number"),
    ({"gate_threshold": float("nan")}, {}, "gate_threshold must be a finite number"),
    ({"zone_values": [0.1, 0.2]}, {}, "five values in"),
    ({"zone_values": "0.1"}, {}, "five values in"),
    ({"zone_values": [0, 0.2, 0.4, 0.6, 1.2]}, {}, "zone_values must be a finite number"),
    ({}, {"a": {"weighted_logloss": 0}}, "models.a.calibration.weighted_logloss"),
    ({}, {"a": {"weighted_logloss": -1}}, "models.a.calibration.weighted_logloss"),
    ({}, {"a": {"score": "top"}}, "models.a.calibration.score must be an object"),
    ({}, {"a": {"score": {"feature": "median"}}}, "score feature 'median'"),
    ({}, {"a": {"score": {"slope": 1}}}, "both slope and intercept"),
    ({}, {"a": {"score": {"intercept": 1}}}, "both slope and intercept"),
    ({}, {"a": {"score": {"slope": "x", "intercept": 0}}}, "must be numbers"),
    ({}, {"a": {"score": {"slope": float("inf"), "intercept": 0}}}, "must be finite"),
    ({}, {"a": {"score": {"slope": 1, "intercept": 0, "offset": 0}}}, "offset must be positive"),
])
def test_calibration_refuses_bad_values_naming_them(pack, models, match):
    with pytest.raises(ModelFolderError, match=match) as info:
        Calibration.from_manifest(pack, models, WHERE)
    assert str(info.value).startswith(WHERE)


def test_score_calibration_round_trips_and_defaults():
    fitted = ScoreCalibration(ScoreFeature.TOP_MEAN, 0.05, slope=1.5, intercept=3.0, offset=0.001)
    assert fitted.to_dict() == {"feature": "top_mean", "parameter": 0.05, "slope": 1.5, "intercept": 3.0, "offset": 0.001}
    assert ScoreCalibration.from_dict(fitted.to_dict(), WHERE) == fitted
    assert ScoreCalibration(ScoreFeature.AREA, 0.5).to_dict() == {"feature": "area", "parameter": 0.5}
    assert ScoreCalibration.from_dict({}, WHERE) == UNCALIBRATED_EXPERT == ScoreCalibration(ScoreFeature.TOP_MEAN, 0.01)
    assert (UNCALIBRATED_EXPERT.slope, UNCALIBRATED_EXPERT.intercept, UNCALIBRATED_EXPERT.offset) == (None, None, 1e-4)
    assert UNCALIBRATED_CLASSIFIER.feature is ScoreFeature.CLASSIFIER and UNCALIBRATED_CLASSIFIER.probability(0.37) == 0.37


def test_probability_is_the_logistic_of_the_log_feature_and_saturates():
    score = ScoreCalibration(ScoreFeature.AREA, 0.5, slope=3.0, intercept=1.0)
    assert score.probability(0.2) == pytest.approx(1 / (1 + math.exp(-(3 * math.log(0.2 + 1e-4) + 1))))
    assert score.probability(-0.5) == score.probability(0.0)  # a negative feature counts as 0
    steep = ScoreCalibration(ScoreFeature.AREA, 0.5, slope=1e6, intercept=0.0)
    assert steep.probability(1.0) == pytest.approx(1.0) and steep.probability(0.0) == pytest.approx(0.0, abs=1e-20)


def test_features_of_an_empty_or_classifier_map_are_errors():
    with pytest.raises(ValueError, match="non-empty"):
        UNCALIBRATED_EXPERT.feature_of(np.zeros((0,), np.float32))
    with pytest.raises(ValueError, match="not computed from a map"):
        UNCALIBRATED_CLASSIFIER.feature_of(np.zeros((4, 4), np.float32))


def test_feature_index_finds_cached_candidates_only():
    for index, candidate in enumerate(SCORE_FEATURES):
        assert feature_index(ScoreCalibration(candidate.feature, candidate.parameter, slope=1.0, intercept=0.0)) == index
    with pytest.raises(ValueError, match="not one of the cached candidates"):
        feature_index(ScoreCalibration(ScoreFeature.AREA, 0.3))


def test_settings_give_each_voter_its_score_or_the_default():
    settings = resolve(get_preset("zones"), Calibration(scores={"a": ScoreCalibration(ScoreFeature.AREA, 0.5)}), ["a", "b", "c", "r"])
    assert settings.score("a").feature is ScoreFeature.AREA
    assert settings.score("b") == UNCALIBRATED_EXPERT and settings.score("clf", classifier=True) == UNCALIBRATED_CLASSIFIER
    assert settings.sources["scores"] == "manifest calibration"
    assert resolve(get_preset("zones"), Calibration(), ["a"]).sources["scores"].startswith("uncalibrated")


class _Named:
    def __init__(self, name: str):
        self.name = name


def test_run_plan_and_its_report(random_pack, tmp_path):
    from app.model_store import LoadedModels, read_manifest
    from app.run_plan import make_plan, run_info

    pack = Path(shutil.copytree(random_pack, tmp_path / "pack"))
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["calibration"]["gate_threshold"] = 0.31
    manifest["models"]["nnunet_2d_336"]["calibration"]["score"] = {"feature": "area", "parameter": 0.5, "slope": 1, "intercept": 0}
    (pack / "manifest.json").write_text(json.dumps(manifest))
    read = read_manifest(pack)  # the models themselves are not needed to plan: stand-ins with their names
    models = LoadedModels(read, _Named("xrv_densenet121_all"), [_Named(n) for n in ("convnext_fpn_clip_336", "nnunet_2d_336", "nnunet_2d_768")],
                          _Named("nnunet_refine_256"), _Named("lung_unet_128"), {"nnunet_2d_336": 0.5})
    for preset_name in ("zones", "weighted"):
        plan = make_plan(tmp_path / "in", tmp_path / "out", models, get_preset(preset_name), "cpu")
        assert plan.input_folder == tmp_path / "in" and plan.output_folder == tmp_path / "out" and plan.device == "cpu"
        assert plan.algorithm.preset == preset_name and plan.algorithm.name == "cxr-lung-opacity"
        assert plan.settings.gate_threshold == 0.31 and plan.models is models
        info = run_info(plan, 3)
        assert info["preset"] == preset_name and info["torch_threads"] == 3 and info["device"] == "cpu"
        assert info["gate_threshold"] == 0.31 and info["gate_threshold_source"] == "manifest calibration"
        assert info["scores"] == {"nnunet_2d_336": {"feature": "area", "parameter": 0.5, "slope": 1.0, "intercept": 0.0, "offset": 0.0001}}
        assert info["input"] == str(tmp_path / "in") and info["output"] == str(tmp_path / "out")
        assert info["models"] == models.versions() and info["model_pack"]["name"] == "random-test-pack"
        assert set(info["model_load_s"]) == set(models.load_seconds)
        if preset_name == "zones":
            assert info["zone_values"] == [0.0, 0.3, 0.5, 0.7, 0.9] and info["zone_values_source"] == "manifest calibration"
            assert info["blend_weights"] == {} and info["blend_weights_source"] is None
        else:
            assert info["zone_values"] is None and info["zone_values_source"] is None
            assert sum(info["blend_weights"].values()) == pytest.approx(1.0)
            assert info["blend_weights_source"] == "1 / weighted log-loss (manifest)"
