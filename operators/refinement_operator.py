"""Step 3: refine positive studies: union of expert masks → components → crops → nnU-Net → paste back."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.results import GateDecision, RefinementResult, first_failure, run_step
from operators.lib.segmenters import SegmentationExpert
from operators.lib.settings import Preset
from operators.lib.steps import refine


class RefinementOperator(Operator):
    """Named input: ``gate`` (GateDecision). Named output: ``refinement`` (RefinementResult or StepFailure).

    The step is :func:`operators.lib.steps.refine`. Negative studies pass through with no refined
    map (the write-up skips step 3 for them).
    """

    INPUT, OUTPUT = "gate", "refinement"

    def __init__(self, fragment: Fragment, *args, model: SegmentationExpert, preset: Preset, **kwargs):
        self._model = model
        self._preset = preset
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT)

    def refine(self, gate: GateDecision) -> RefinementResult:
        """This operator's work for one gate decision, callable without a graph."""
        started = time.perf_counter()
        if not gate.positive:
            return RefinementResult(gate, self._model.name, None, (), 0.0)
        refined, boxes = refine(gate.case.pixels, [e.prob_map for e in gate.experts], self._model.predict_square,
                                self._model.input_size_px, self._preset)
        return RefinementResult(gate, self._model.name, refined, tuple(tuple(b.as_list()) for b in boxes), time.perf_counter() - started)

    def compute(self, op_input, op_output, context) -> None:
        gate = op_input.receive(self.INPUT)
        op_output.emit(first_failure(gate) or run_step(f"refinement:{self._model.name}", gate.case, lambda: self.refine(gate)), self.OUTPUT)
