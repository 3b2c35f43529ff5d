"""A models folder's calibration, typed and validated, and its resolution into the settings of one run.

``manifest.json`` carries what ``python -m training.calibrate`` fitted (``models/README.md``):

* pack level (``calibration``): ``gate_threshold``, ``zone_values``;
* per model (``models.<name>.calibration``): ``weighted_logloss`` (the Weighted blend's weights are
  ∝ 1 / loss) and ``score`` (how that model's image-level opacity score is computed and mapped to a
  probability: :class:`ScoreCalibration`).

:class:`Calibration` is parsed once, when the manifest is read; :func:`resolve` turns a preset plus
a calibration into :class:`PipelineSettings`, the one object the step functions
(:mod:`operators.lib.steps`) take — in the app, in calibration, evaluation and the benchmark alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np

from operators.lib.errors import ModelFolderError
from operators.lib.settings import BlendMode, Preset

#: gate threshold of a pack without calibration (every score is "probability-like, 0.5 = operating point")
DEFAULT_GATE_THRESHOLD = 0.5


class ScoreFeature(str, Enum):
    """What an expert's image-level score measures on its probability map (at the model's input size)."""

    #: mean of the top ``parameter`` fraction of pixels (the first packs' score; 0.01 = top 1 %)
    TOP_MEAN = "top_mean"
    #: fraction of the pixels at or above ``parameter`` (predicted opacity area)
    AREA = "area"
    #: the classifier's own output (only for the classifier)
    CLASSIFIER = "classifier"


@dataclass(frozen=True)
class ScoreCalibration:
    """How one model's image-level opacity score is made: a raw feature of its output, then
    optionally a logistic map to a probability fitted on the calib split:
    ``σ(slope · log(feature + offset) + intercept)`` (``log`` of the feature, since areas and top
    means span orders of magnitude between clean and diseased lungs). Without ``slope`` the raw
    feature is the score (the uncalibrated behaviour of the first packs)."""

    feature: ScoreFeature = ScoreFeature.TOP_MEAN
    parameter: float = 0.01
    slope: float | None = None
    intercept: float | None = None
    offset: float = 1e-4

    def feature_of(self, prob_map: np.ndarray) -> float:
        """The raw feature of an expert's probability map."""
        flat = np.asarray(prob_map, dtype=np.float32).ravel()
        if flat.size == 0:
            raise ValueError("an opacity score needs a non-empty probability map.")
        if self.feature is ScoreFeature.TOP_MEAN:
            k = max(1, int(round(flat.size * self.parameter)))
            return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())
        if self.feature is ScoreFeature.AREA:
            return float(np.count_nonzero(flat >= self.parameter) / flat.size)
        raise ValueError(f"feature {self.feature.value!r} is not computed from a map.")

    def probability(self, feature: float) -> float:
        """The score for a raw feature value: the logistic map when fitted, else the feature itself."""
        if self.slope is None or self.intercept is None:
            return float(feature)
        z = self.slope * math.log(max(float(feature), 0.0) + self.offset) + self.intercept
        return float(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feature": self.feature.value, "parameter": self.parameter}
        if self.slope is not None:
            out.update(slope=self.slope, intercept=self.intercept, offset=self.offset)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "ScoreCalibration":
        try:
            feature = ScoreFeature(data.get("feature", ScoreFeature.TOP_MEAN.value))
        except ValueError:
            raise ModelFolderError(f"{where}: score feature {data.get('feature')!r}; expected one of {[f.value for f in ScoreFeature]}.") from None
        try:
            values = {key: float(data[key]) for key in ("parameter", "slope", "intercept", "offset") if data.get(key) is not None}
        except (TypeError, ValueError):
            raise ModelFolderError(f"{where}: score calibration values must be numbers; got {dict(data)}.") from None
        if any(not math.isfinite(v) for v in values.values()):
            raise ModelFolderError(f"{where}: score calibration values must be finite; got {dict(data)}.")
        if ("slope" in values) != ("intercept" in values):
            raise ModelFolderError(f"{where}: score calibration needs both slope and intercept, or neither.")
        if values.get("offset", 1e-4) <= 0:
            raise ModelFolderError(f"{where}: score calibration offset must be positive.")
        return cls(feature=feature, **values)


#: the features calibration chooses from (and that training.pipeline caches for every expert)
SCORE_FEATURES: tuple[ScoreCalibration, ...] = (
    ScoreCalibration(ScoreFeature.TOP_MEAN, 0.01),
    ScoreCalibration(ScoreFeature.TOP_MEAN, 0.05),
    ScoreCalibration(ScoreFeature.AREA, 0.5),
    ScoreCalibration(ScoreFeature.AREA, 0.8),
)


def feature_index(score: ScoreCalibration) -> int:
    """Position of ``score``'s feature in :data:`SCORE_FEATURES` (ValueError when it is not one of them)."""
    for index, candidate in enumerate(SCORE_FEATURES):
        if candidate.feature is score.feature and math.isclose(candidate.parameter, score.parameter):
            return index
    raise ValueError(f"score feature {score.feature.value}({score.parameter}) is not one of the cached candidates "
                     f"{[(c.feature.value, c.parameter) for c in SCORE_FEATURES]}.")


#: the score of a model whose manifest entry says nothing (the first packs' behaviour)
UNCALIBRATED_EXPERT = ScoreCalibration()
UNCALIBRATED_CLASSIFIER = ScoreCalibration(feature=ScoreFeature.CLASSIFIER, parameter=0.0)


def _number(value: Any, what: str, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelFolderError(f"{where}: {what} must be a number; got {value!r}.") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise ModelFolderError(f"{where}: {what} must be a finite number in [{low}, {high}]; got {value!r}.")
    return number


@dataclass(frozen=True)
class Calibration:
    """Everything ``training.calibrate`` fitted for a pack, validated when the manifest is read."""

    gate_threshold: float | None = None
    zone_values: tuple[float, ...] | None = None
    weighted_logloss: dict[str, float] = field(default_factory=dict)  # map name -> loss
    scores: dict[str, ScoreCalibration] = field(default_factory=dict)  # model name -> score definition

    @classmethod
    def from_manifest(cls, pack: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]], where: str) -> "Calibration":
        """``pack`` = the manifest's ``calibration``; ``models`` = each model's ``calibration`` by name."""
        threshold = pack.get("gate_threshold")
        zones = pack.get("zone_values")
        if zones is not None:
            if not isinstance(zones, (list, tuple)) or len(zones) != 5:
                raise ModelFolderError(f"{where}: calibration.zone_values must be five values in [0, 1]; got {zones}.")
            zones = tuple(_number(v, "calibration.zone_values", where, 0.0, 1.0) for v in zones)
        losses, scores = {}, {}
        for name, entry in models.items():
            if entry.get("weighted_logloss") is not None:
                losses[name] = _number(entry["weighted_logloss"], f"models.{name}.calibration.weighted_logloss", where, 1e-9)
            if entry.get("score") is not None:
                if not isinstance(entry["score"], Mapping):
                    raise ModelFolderError(f"{where}: models.{name}.calibration.score must be an object; got {entry['score']!r}.")
                scores[name] = ScoreCalibration.from_dict(entry["score"], f"{where}: models.{name}.calibration.score")
        return cls(
            gate_threshold=None if threshold is None else _number(threshold, "calibration.gate_threshold", where, 0.0, 1.0),
            zone_values=zones,
            weighted_logloss=losses,
            scores=scores,
        )


@dataclass(frozen=True)
class PipelineSettings:
    """Everything steps 1–4 need for one run, resolved once (:func:`resolve`)."""

    preset: Preset  # zone_values are the calibrated ones where the pack has them and the preset uses them
    gate_threshold: float
    blend_weights: dict[str, float]  # map name (experts in gate order, then the refinement) -> weight, sum 1
    scores: dict[str, ScoreCalibration]  # model name -> how its score is made
    sources: dict[str, str]  # where gate_threshold, zone_values, blend_weights and scores came from

    def score(self, model_name: str, classifier: bool = False) -> ScoreCalibration:
        return self.scores.get(model_name, UNCALIBRATED_CLASSIFIER if classifier else UNCALIBRATED_EXPERT)


def blend_weights_from_logloss(loglosses: Sequence[float]) -> np.ndarray:
    """"Weighted" blend weights: ∝ 1 / weighted log-loss, normalised to sum to 1."""
    values = np.asarray(loglosses, dtype=np.float64)
    if values.size == 0 or np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"Weighted log-losses must be finite and positive; got {values.tolist()}.")
    inverse = 1.0 / values
    return inverse / inverse.sum()


def resolve(preset: Preset, calibration: Calibration, map_names: Sequence[str]) -> PipelineSettings:
    """A preset and a pack's calibration → the run's settings (each value's source recorded).

    ``map_names``: the three experts in gate order, then the refinement model (the blend's maps).
    Gate threshold: the preset's when it sets one, else the calibration's, else 0.5. Zones values:
    the calibration's when present and the preset accepts them. Weighted blend: 1 / log-loss when
    every map has one, else equal weights.
    """
    sources: dict[str, str] = {}
    if preset.gate_threshold is not None:
        threshold, sources["gate_threshold"] = float(preset.gate_threshold), "preset"
    elif calibration.gate_threshold is not None:
        threshold, sources["gate_threshold"] = calibration.gate_threshold, "manifest calibration"
    else:
        threshold, sources["gate_threshold"] = DEFAULT_GATE_THRESHOLD, "default (uncalibrated pack)"
    if calibration.zone_values is not None and preset.zone_values_from_calibration:
        preset = replace(preset, zone_values=calibration.zone_values)
        sources["zone_values"] = "manifest calibration"
    else:
        sources["zone_values"] = "preset default"
    names = list(map_names)
    if names and all(name in calibration.weighted_logloss for name in names):
        weights = dict(zip(names, (float(w) for w in blend_weights_from_logloss([calibration.weighted_logloss[n] for n in names]))))
        sources["blend_weights"] = "1 / weighted log-loss (manifest)"
    else:
        weights = {name: 1.0 / len(names) for name in names} if names else {}
        sources["blend_weights"] = "equal (uncalibrated)"
    sources["scores"] = "manifest calibration" if calibration.scores else "uncalibrated (raw features)"
    return PipelineSettings(preset=preset, gate_threshold=threshold, blend_weights=weights, scores=dict(calibration.scores), sources=sources)


__all__ = ["BlendMode", "Calibration", "PipelineSettings", "ScoreCalibration", "ScoreFeature", "blend_weights_from_logloss", "resolve"]
