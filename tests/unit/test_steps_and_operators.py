"""Each step operator's logic through the very method the graph calls, on hand-made maps whose expected
outputs are computed here by hand: positive and negative studies under each preset, the calibrated
Zones values, the Weighted blend's 1/log-loss weights, the lung-prior passes, the binary threshold,
the gate threshold and the voters' score calibrations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.deploy.core import Fragment

from app.presets import PRESETS, get_preset
from operators.blend_operator import BlendOperator
from operators.lib.calibration import Calibration, ScoreCalibration, ScoreFeature, resolve
from operators.lib.dicom_input import CxrImage
from operators.lib.results import ClassifierResult, ExpertResult, FinalResult, GateDecision, LungResult, RefinementResult, StepFailure
from operators.opacity_classifier_operator import OpacityClassifierOperator
from operators.opacity_gate_operator import OpacityGateOperator
from operators.refinement_operator import RefinementOperator
from operators.segmentation_expert_operator import SegmentationExpertOperator

H, W = 60, 80
EXPERTS = ("fpn", "nn_a", "nn_b")
REFINE = "refine"
MAPS = (*EXPERTS, REFINE)
#: calibration values that differ from every default, so a step that ignores them is caught
ZONES = (0.02, 0.41, 0.57, 0.73, 0.88)
LOSSES = {"fpn": 0.5, "nn_a": 0.25, "nn_b": 1.0, "refine": 0.4}
GATE_THRESHOLD = 0.37


@pytest.fixture(scope="module")
def fragment() -> Fragment:
    return Fragment()


def case() -> CxrImage:
    ds = pydicom.Dataset()
    ds.SOPInstanceUID = "1.2.3"
    return CxrImage("1.2.3", Path("x.dcm"), ds, np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W))


def vote_maps() -> dict[str, np.ndarray]:
    """Four maps whose votes (≥ 0.5) give 0 … 4 agreeing maps in five column bands of the image."""
    maps = {name: np.full((H, W), 0.2, np.float32) for name in MAPS}
    for k in range(1, 5):  # band k (columns 16k … 16k+15): the first k maps vote
        for name in MAPS[:k]:
            maps[name][:, 16 * k : 16 * k + 16] = 0.5 + 0.1 * k
    return maps


def lung_mask() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[20:40, 30:50] = True
    return mask


def settings_for(preset_name: str, **preset_overrides):
    calibration = Calibration(gate_threshold=GATE_THRESHOLD, zone_values=ZONES, weighted_logloss=LOSSES)
    return resolve(get_preset(preset_name, **preset_overrides), calibration, MAPS)


def gate_decision(positive: bool, maps: dict[str, np.ndarray] | None = None) -> GateDecision:
    cxr = case()
    maps = maps or vote_maps()
    classifier = ClassifierResult(cxr, "clf", 0.9 if positive else 0.1, 0.0)
    experts = tuple(ExpertResult(cxr, name, maps[name], 0.9 if positive else 0.1, 0.0) for name in EXPERTS)
    return GateDecision(cxr, classifier, experts, 0.9 if positive else 0.1, GATE_THRESHOLD, positive)


def blend(fragment, preset_name: str, positive: bool, **preset_overrides):
    maps = vote_maps()
    gate = gate_decision(positive, maps)
    refinement = RefinementResult(gate, REFINE, maps[REFINE] if positive else None, (), 0.0)
    operator = BlendOperator(fragment, settings=settings_for(preset_name, **preset_overrides), name=f"blend_{preset_name}")
    return operator.blend(refinement, LungResult(gate.case, "lung", lung_mask(), 0.0)), maps


def prior_regions(preset_name: str):
    """Pixels of the lung mask dilated by the preset's radius, and by its wide radius (this image's size)."""
    from operators.lib.blending import distance_to_mask

    prior = get_preset(preset_name).lung_prior
    radius = max(1, round(prior.dilation_fraction * min(H, W)))
    wide = max(radius, round(prior.wide_dilation_fraction * min(H, W)))
    distance = distance_to_mask(lung_mask())
    return distance <= radius, distance <= wide


@pytest.mark.parametrize("preset_name", ["zones", "zones-low"])
def test_zones_positive_study_gets_the_manifests_zone_values_then_the_lung_prior(fragment, preset_name):
    final, _ = blend(fragment, preset_name, positive=True)
    prior = get_preset(preset_name).lung_prior
    near, wide = prior_regions(preset_name)
    votes = np.zeros((H, W), int)
    for k in range(1, 5):
        votes[:, 16 * k : 16 * k + 16] = k
    floor = np.where(near, prior.lung_value_positive, np.where(wide, prior.lung_value_negative, prior.background_positive))
    expected = np.maximum(np.asarray(ZONES, np.float32)[votes], floor)
    np.testing.assert_allclose(final.prob_map, expected, atol=1e-6)
    np.testing.assert_array_equal(final.opacity_mask, expected >= 0.5)
    assert final.blend == "zones" and final.blend_weights == {}


def test_weighted_positive_study_uses_inverse_logloss_weights(fragment):
    final, maps = blend(fragment, "weighted", positive=True)
    inverse = {name: 1 / loss for name, loss in LOSSES.items()}
    weights = {name: value / sum(inverse.values()) for name, value in inverse.items()}
    assert final.blend_weights == pytest.approx(weights)
    prior = get_preset("weighted").lung_prior
    near, wide = prior_regions("weighted")
    blended = sum(weights[name] * maps[name] for name in MAPS)
    floor = np.where(near, prior.lung_value_positive, np.where(wide, prior.lung_value_negative, prior.background_positive))
    np.testing.assert_allclose(final.prob_map, np.maximum(blended, floor), atol=1e-6)
    assert final.blend == "weighted"


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_negative_study_gets_only_the_negative_lung_pass(fragment, preset_name):
    final, _ = blend(fragment, preset_name, positive=False)
    prior = get_preset(preset_name).lung_prior
    near, _ = prior_regions(preset_name)
    expected = np.where(near, prior.lung_value_negative, prior.background_negative).astype(np.float32)
    np.testing.assert_allclose(final.prob_map, expected, atol=1e-6)
    assert not final.opacity_mask.any() and final.blend_weights == {}


def test_binary_mask_uses_the_presets_threshold(fragment):
    final, _ = blend(fragment, "zones", positive=True, binary_threshold=0.7)
    np.testing.assert_array_equal(final.opacity_mask, final.prob_map >= 0.7)
    assert final.opacity_mask.any() and not (final.opacity_mask == (final.prob_map >= 0.5)).all()


def test_binary_threshold_is_inclusive(fragment):
    """A pixel exactly at the threshold (a zone value, as stored in float32) is opacity."""
    at = float(np.float32(ZONES[3]))
    final, _ = blend(fragment, "zones", positive=True, binary_threshold=at)
    exactly = final.prob_map == np.float32(at)
    assert exactly.any() and final.opacity_mask[exactly].all()


def test_resolve_takes_calibration_over_defaults_and_says_so():
    settings = settings_for("zones")
    assert settings.gate_threshold == GATE_THRESHOLD and settings.sources["gate_threshold"] == "manifest calibration"
    assert settings.preset.zone_values == ZONES and settings.sources["zone_values"] == "manifest calibration"
    bare = resolve(get_preset("weighted"), Calibration(weighted_logloss={"fpn": 0.5}), MAPS)
    assert bare.gate_threshold == 0.5 and bare.sources["gate_threshold"].startswith("default")
    assert bare.blend_weights == {name: 0.25 for name in MAPS} and bare.sources["blend_weights"].startswith("equal")
    assert bare.preset.zone_values == get_preset("weighted").zone_values
    fixed = resolve(get_preset("zones", gate_threshold=0.8, zone_values_from_calibration=False), Calibration(GATE_THRESHOLD, ZONES), MAPS)
    assert fixed.gate_threshold == 0.8 and fixed.sources["gate_threshold"] == "preset"
    assert fixed.preset.zone_values == get_preset("zones").zone_values and fixed.sources["zone_values"] == "preset default"


@pytest.mark.parametrize("scores, positive", [((0.2, 0.3, 0.5, 0.5), True), ((0.2, 0.3, 0.5, 0.47), False)])
def test_gate_operator_compares_the_mean_with_the_runs_threshold(fragment, scores, positive):
    cxr = case()
    operator = OpacityGateOperator(fragment, threshold=GATE_THRESHOLD, name=f"gate_{positive}")
    classifier = ClassifierResult(cxr, "clf", scores[0], 0.0)
    experts = [ExpertResult(cxr, name, np.zeros((H, W), np.float32), s, 0.0) for name, s in zip(EXPERTS, scores[1:])]
    decision = operator.decide(classifier, experts)
    assert decision.mean_score == pytest.approx(np.mean(scores)) and decision.threshold == GATE_THRESHOLD
    assert decision.positive is positive  # mean 0.375 ≥ 0.37; mean 0.3675 < 0.37
    assert decision.scores == {"clf": scores[0], **dict(zip(EXPERTS, scores[1:]))}


class _Model:
    """A model stand-in that records what it is given (the step's inputs are what is under test)."""

    def __init__(self, name: str, size: int, value: float = 0.8):
        self.name, self.input_size_px, self.value, self.calls, self.images = name, size, value, [], []

    def predict_square(self, square: np.ndarray) -> np.ndarray:
        self.calls.append(square.shape)
        out = np.zeros(square.shape, np.float32)
        out[square.shape[0] // 4 : 3 * square.shape[0] // 4, square.shape[1] // 4 : 3 * square.shape[1] // 4] = self.value
        return out

    def predict(self, image: np.ndarray) -> float:
        self.images.append(image)
        return 0.3


def test_refinement_refines_the_union_of_the_expert_masks_of_positive_studies_only(fragment):
    maps = {name: np.zeros((H, W), np.float32) for name in MAPS}
    maps["fpn"][10:20, 10:20] = 0.9  # two separate components from two experts
    maps["nn_b"][40:50, 50:70] = 0.6
    maps["nn_a"][40:50, 50:70] = 0.4  # below the mask threshold: not part of the union
    model = _Model(REFINE, 32)
    operator = RefinementOperator(fragment, model=model, preset=get_preset("zones"), name="refinement")
    result = operator.refine(gate_decision(True, maps))
    assert len(model.calls) == 2 and all(shape == (32, 32) for shape in model.calls)
    boxes = sorted(result.boxes)
    assert len(boxes) == 2
    (t1, l1, b1, r1), (t2, l2, b2, r2) = boxes
    assert t1 <= 10 and l1 <= 10 and b1 >= 20 and r1 >= 20 and t2 <= 40 and l2 <= 50 and b2 >= 50 and r2 >= 70
    outside = np.ones((H, W), bool)
    for top, left, bottom, right in boxes:
        outside[top:bottom, left:right] = False
    assert result.prob_map.shape == (H, W) and not result.prob_map[outside].any() and result.prob_map.max() == pytest.approx(0.8)
    negative = operator.refine(gate_decision(False, maps))
    assert negative.prob_map is None and negative.boxes == () and len(model.calls) == 2


def test_expert_and_classifier_operators_apply_their_score_calibration(fragment):
    area = ScoreCalibration(ScoreFeature.AREA, 0.5, slope=2.0, intercept=1.0)
    expert = SegmentationExpertOperator(fragment, model=_Model("fpn", 40), score=area, name="expert")
    result = expert.run(case())
    square = _Model("x", 40).predict_square(np.zeros((40, 40), np.float32))
    assert result.score == pytest.approx(area.probability(area.feature_of(square)))
    assert result.score != pytest.approx(area.feature_of(square))  # the map, not the raw feature
    assert result.prob_map.shape == (H, W)
    mapped = ScoreCalibration(ScoreFeature.CLASSIFIER, 0.0, slope=3.0, intercept=2.0)
    classifier = OpacityClassifierOperator(fragment, model=_Model("clf", 224), score=mapped, name="classifier")
    assert classifier.run(case()).score == pytest.approx(mapped.probability(0.3))


def test_a_failure_upstream_passes_through_every_step(fragment):
    failure = StepFailure(case(), "expert:fpn", "boom")
    operator = OpacityGateOperator(fragment, threshold=GATE_THRESHOLD, name="gate_failure")
    assert operator.decide(failure, []) is failure


class Ports:
    """The op_input / op_output a graph hands ``compute``: named inputs in, named outputs recorded."""

    def __init__(self, **items):
        self.items, self.emitted = items, {}

    def receive(self, name):
        return self.items[name]

    def emit(self, value, name):
        self.emitted[name] = value


def test_operators_compute_receive_and_emit_on_their_named_ports(fragment):
    cxr = case()
    maps = vote_maps()
    gate_ports = Ports(classifier_result=ClassifierResult(cxr, "clf", 0.9, 0.0),
                       **{f"expert_{k}": ExpertResult(cxr, name, maps[name], 0.8, 0.0) for k, name in enumerate(EXPERTS, start=1)})
    OpacityGateOperator(fragment, threshold=GATE_THRESHOLD, name="gate_c").compute(gate_ports, gate_ports, None)
    decision = gate_ports.emitted["gate"]
    assert isinstance(decision, GateDecision) and decision.positive and [e.model_name for e in decision.experts] == list(EXPERTS)
    refine_ports = Ports(gate=decision)
    RefinementOperator(fragment, model=_Model(REFINE, 32), preset=get_preset("zones"), name="refine_c").compute(refine_ports, refine_ports, None)
    refinement = refine_ports.emitted["refinement"]
    assert isinstance(refinement, RefinementResult) and refinement.prob_map is not None
    blend_ports = Ports(refinement=refinement, lung_result=LungResult(cxr, "lung", lung_mask(), 0.0))
    BlendOperator(fragment, settings=settings_for("zones"), name="blend_c").compute(blend_ports, blend_ports, None)
    final = blend_ports.emitted["final"]
    assert isinstance(final, FinalResult) and final.prob_map.shape == (H, W) and final.refinement is refinement


def test_a_failing_step_emits_a_failure_that_every_later_step_passes_on(fragment):
    cxr = case()
    broken = _Model("fpn", 40)
    broken.predict_square = lambda square: (_ for _ in ()).throw(RuntimeError("model crash"))
    expert_ports = Ports(cxr=cxr)
    SegmentationExpertOperator(fragment, model=broken, score=ScoreCalibration(), name="expert_f").compute(expert_ports, expert_ports, None)
    failure = expert_ports.emitted["expert_result"]
    assert isinstance(failure, StepFailure) and failure.step == "expert:fpn" and "RuntimeError: model crash" in failure.message
    gate_ports = Ports(classifier_result=ClassifierResult(cxr, "clf", 0.9, 0.0), expert_1=failure,
                       expert_2=ExpertResult(cxr, "b", np.zeros((H, W), np.float32), 0.1, 0.0),
                       expert_3=ExpertResult(cxr, "c", np.zeros((H, W), np.float32), 0.1, 0.0))
    OpacityGateOperator(fragment, threshold=GATE_THRESHOLD, name="gate_f").compute(gate_ports, gate_ports, None)
    assert gate_ports.emitted["gate"] is failure
    refine_ports = Ports(gate=failure)
    RefinementOperator(fragment, model=_Model(REFINE, 32), preset=get_preset("zones"), name="refine_f").compute(refine_ports, refine_ports, None)
    assert refine_ports.emitted["refinement"] is failure
    blend_ports = Ports(refinement=failure, lung_result=LungResult(cxr, "lung", lung_mask(), 0.0))
    BlendOperator(fragment, settings=settings_for("zones"), name="blend_f").compute(blend_ports, blend_ports, None)
    assert blend_ports.emitted["final"] is failure


def test_steps_of_different_images_are_refused_as_a_wiring_bug(fragment):
    other = CxrImage("9.9.9", Path("y.dcm"), pydicom.Dataset(), np.zeros((H, W), np.float32))
    gate = gate_decision(True)
    refinement = RefinementResult(gate, REFINE, vote_maps()[REFINE], (), 0.0)
    ports = Ports(refinement=refinement, lung_result=LungResult(other, "lung", lung_mask(), 0.0))
    BlendOperator(fragment, settings=settings_for("zones"), name="blend_w").compute(ports, ports, None)
    failure = ports.emitted["final"]
    assert isinstance(failure, StepFailure) and failure.step == "blend" and "different images" in failure.message


def test_refinement_boxes_follow_the_presets_threshold_cap_minimum_area_and_crop_size():
    """One expert map (a valid input) at 0.4: marked under a 0.3 mask threshold; a 4-px component is below
    the minimum area (0.1 % of 100×100); every crop is at least 30 % of the shorter side; the cap keeps the
    largest."""
    from operators.lib.components import Box
    from operators.lib.steps import refinement_boxes

    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:30] = prob[60:70, 60:70] = prob[85:90, 10:15] = prob[50:52, 90:92] = 0.4
    preset = get_preset("zones", mask_threshold=0.3, max_components=8, min_component_fraction=0.001, crop_pad_fraction=0.0,
                        min_crop_fraction=0.3)
    assert refinement_boxes([prob], preset) == [Box(5, 5, 35, 35), Box(50, 50, 80, 80), Box(70, 0, 100, 30)]
    assert refinement_boxes([prob, np.zeros_like(prob)], get_preset("zones", mask_threshold=0.3, max_components=2,
                            min_component_fraction=0.001, crop_pad_fraction=0.0, min_crop_fraction=0.3)) == [Box(5, 5, 35, 35), Box(50, 50, 80, 80)]


def test_zones_votes_use_the_presets_mask_threshold(fragment):
    """At a 0.65 mask threshold the first band (0.6 in one map) gets no vote; the others keep theirs."""
    final, _ = blend(fragment, "zones", positive=True, mask_threshold=0.65)
    prior = get_preset("zones").lung_prior
    near, wide = prior_regions("zones")
    votes = np.zeros((H, W), int)
    for k in range(2, 5):
        votes[:, 16 * k : 16 * k + 16] = k
    floor = np.where(near, prior.lung_value_positive, np.where(wide, prior.lung_value_negative, prior.background_positive))
    np.testing.assert_allclose(final.prob_map, np.maximum(np.asarray(ZONES, np.float32)[votes], floor), atol=1e-6)


def test_each_result_carries_its_case_model_inputs_and_own_time(fragment):
    """What the report is made of: the image and model behind each result, the refinement's gate, the
    final result's lung mask, and each step's seconds within the call's wall time (0 for a skipped
    refinement); and each operator keeps the name it was given."""
    import time

    cxr = case()

    def timed(call):
        started = time.perf_counter()
        result = call()
        return result, time.perf_counter() - started

    expert_model, classifier_model = _Model("fpn", 40), _Model("clf", 224)
    expert_op = SegmentationExpertOperator(fragment, model=expert_model, score=ScoreCalibration(), name="expert_t")
    expert, elapsed = timed(lambda: expert_op.run(cxr))
    assert expert.case is cxr and expert.model_name == "fpn" and 0 < expert.seconds <= elapsed
    classifier_op = OpacityClassifierOperator(fragment, model=classifier_model, score=ScoreCalibration(), name="classifier_t")
    classifier, elapsed = timed(lambda: classifier_op.run(cxr))
    assert classifier.case is cxr and classifier.model_name == "clf" and 0 < classifier.seconds <= elapsed
    assert len(classifier_model.images) == 1 and classifier_model.images[0] is cxr.pixels
    refine_op = RefinementOperator(fragment, model=_Model(REFINE, 32), preset=get_preset("zones"), name="refine_t")
    positive = gate_decision(True)
    refinement, elapsed = timed(lambda: refine_op.refine(positive))
    assert refinement.gate is positive and refinement.model_name == REFINE and 0 < refinement.seconds <= elapsed
    negative = gate_decision(False)
    skipped = refine_op.refine(negative)
    assert skipped.gate is negative and skipped.model_name == REFINE and skipped.seconds == 0.0
    lung = LungResult(positive.case, "lung", lung_mask(), 0.0)
    blend_op = BlendOperator(fragment, settings=settings_for("zones"), name="blend_t")
    final, elapsed = timed(lambda: blend_op.blend(refinement, lung))
    assert final.lung is lung and final.refinement is refinement and 0 < final.seconds <= elapsed
    gate_op = OpacityGateOperator(fragment, threshold=GATE_THRESHOLD, name="gate_t")
    assert [op.name for op in (expert_op, classifier_op, refine_op, blend_op, gate_op)] == \
        ["expert_t", "classifier_t", "refine_t", "blend_t", "gate_t"]


def test_gate_refuses_scores_of_different_images_as_a_gate_failure(fragment):
    cxr = case()
    other = CxrImage("9.9.9", Path("y.dcm"), pydicom.Dataset(), np.zeros((H, W), np.float32))
    operator = OpacityGateOperator(fragment, threshold=GATE_THRESHOLD, name="gate_w")
    experts = [ExpertResult(cxr, name, np.zeros((H, W), np.float32), 0.5, 0.0) for name in EXPERTS]
    for classifier, expert_list in ((ClassifierResult(other, "clf", 0.5, 0.0), experts),
                                    (ClassifierResult(cxr, "clf", 0.5, 0.0), experts[:2] + [ExpertResult(other, "x", experts[0].prob_map, 0.5, 0.0)])):
        failure = operator.decide(classifier, expert_list)
        assert isinstance(failure, StepFailure) and failure.step == "gate" and failure.case is classifier.case
        assert "different images" in failure.message


def test_a_crashing_refinement_or_a_lung_failure_is_this_images_failure(fragment):
    gate = gate_decision(True)
    broken = _Model(REFINE, 32)
    broken.predict_square = lambda square: (_ for _ in ()).throw(RuntimeError("refine crash"))
    ports = Ports(gate=gate)
    RefinementOperator(fragment, model=broken, preset=get_preset("zones"), name="refine_x").compute(ports, ports, None)
    failure = ports.emitted["refinement"]
    assert isinstance(failure, StepFailure) and failure.step == f"refinement:{REFINE}" and failure.case is gate.case
    assert "RuntimeError: refine crash" in failure.message
    lung_failure = StepFailure(gate.case, "lung:lung", "boom")
    refinement = RefinementResult(gate, REFINE, vote_maps()[REFINE], (), 0.0)
    blend_ports = Ports(refinement=refinement, lung_result=lung_failure)
    BlendOperator(fragment, settings=settings_for("zones"), name="blend_x").compute(blend_ports, blend_ports, None)
    assert blend_ports.emitted["final"] is lung_failure
