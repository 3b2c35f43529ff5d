"""The payloads that travel between operators, one image at a time.

Each operator receives results for one :class:`CxrImage` and emits its own immutable result. When a
step fails for an image, it emits a :class:`StepFailure` instead, and every downstream operator
passes that failure on untouched, so the writer reports it while the other images carry on.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from operators.lib.dicom_input import CxrImage

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StepFailure:
    """A step raised for this image; the image gets no SEG, the run goes on."""

    case: CxrImage
    step: str
    message: str


@dataclass(frozen=True)
class ClassifierResult:
    """Step 1: the public classifier's "Lung Opacity" score for one image."""

    case: CxrImage
    model_name: str
    score: float
    seconds: float


@dataclass(frozen=True)
class ExpertResult:
    """Step 2: one segmentation expert's opacity map (H×W, source grid) and its image score."""

    case: CxrImage
    model_name: str
    prob_map: np.ndarray
    score: float
    seconds: float


@dataclass(frozen=True)
class LungResult:
    """Lung mask (H×W bool, source grid) for step 4."""

    case: CxrImage
    model_name: str
    mask: np.ndarray
    seconds: float


@dataclass(frozen=True)
class GateDecision:
    """Steps 1+2: the four scores, their mean, the threshold and the positive/negative decision."""

    case: CxrImage
    classifier: ClassifierResult
    experts: tuple[ExpertResult, ...]
    mean_score: float
    threshold: float
    positive: bool

    @property
    def scores(self) -> dict[str, float]:
        out = {self.classifier.model_name: self.classifier.score}
        out.update({expert.model_name: expert.score for expert in self.experts})
        return out


@dataclass(frozen=True)
class RefinementResult:
    """Step 3: the refined map (H×W; zero outside the refined crops), or None for a negative study."""

    gate: GateDecision
    model_name: str
    prob_map: np.ndarray | None
    boxes: tuple[tuple[int, int, int, int], ...]
    seconds: float

    @property
    def case(self) -> CxrImage:
        return self.gate.case


@dataclass(frozen=True)
class FinalResult:
    """Step 4: the final probability map and binary mask on the source grid, with everything behind them."""

    refinement: RefinementResult
    lung: LungResult
    prob_map: np.ndarray
    opacity_mask: np.ndarray
    blend: str
    blend_weights: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def case(self) -> CxrImage:
        return self.refinement.gate.case

    @property
    def gate(self) -> GateDecision:
        return self.refinement.gate


def first_failure(*items: object) -> StepFailure | None:
    """The first StepFailure among a step's inputs, if any."""
    for item in items:
        if isinstance(item, StepFailure):
            return item
    return None


def same_case(*items: object) -> None:
    """Raise if inputs that should describe one image describe different ones (a wiring bug)."""
    ids = {getattr(item, "case").case_id for item in items}
    if len(ids) != 1:
        raise RuntimeError(f"Operator inputs belong to different images: {sorted(ids)}.")


def run_step(step: str, case: CxrImage, work: Callable[[], T]) -> T | StepFailure:
    """Run one step's work for one image; a raised exception becomes a StepFailure (logged with its traceback)."""
    started = time.perf_counter()
    try:
        return work()
    except Exception as exc:  # per-image isolation: one bad image never costs another its result
        logger.error("%s: step %s failed after %.2fs: %s\n%s", case.path, step, time.perf_counter() - started, exc, traceback.format_exc())
        return StepFailure(case=case, step=step, message=f"{type(exc).__name__}: {exc}")
