"""Step 4: blend the four maps (Zones or Weighted) and apply the lung prior."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.calibration import PipelineSettings
from operators.lib.results import FinalResult, LungResult, RefinementResult, first_failure, run_step, same_case
from operators.lib.steps import final_map


class BlendOperator(Operator):
    """Named inputs: ``refinement`` (RefinementResult), ``lung_result`` (LungResult).
    Named output: ``final`` (FinalResult or StepFailure).

    The step is :func:`operators.lib.steps.final_map` with the run's resolved ``settings``.
    """

    REFINEMENT, LUNG, OUTPUT = "refinement", "lung_result", "final"

    def __init__(self, fragment: Fragment, *args, settings: PipelineSettings, **kwargs):
        self._settings = settings
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.REFINEMENT)
        spec.input(self.LUNG)
        spec.output(self.OUTPUT)

    def blend(self, refinement: RefinementResult, lung: LungResult) -> FinalResult:
        """This operator's work for one image, callable without a graph."""
        started = time.perf_counter()
        same_case(refinement, lung)
        gate = refinement.gate
        maps = {e.model_name: e.prob_map for e in gate.experts}
        if gate.positive:
            maps[refinement.model_name] = refinement.prob_map
        final = final_map(gate.positive, maps, lung.mask, self._settings)
        return FinalResult(refinement, lung, final.prob_map, final.opacity_mask, self._settings.preset.blend.value,
                           final.blend_weights, time.perf_counter() - started)

    def compute(self, op_input, op_output, context) -> None:
        refinement = op_input.receive(self.REFINEMENT)
        lung = op_input.receive(self.LUNG)
        failure = first_failure(refinement, lung)
        op_output.emit(failure or run_step("blend", refinement.case, lambda: self.blend(refinement, lung)), self.OUTPUT)
