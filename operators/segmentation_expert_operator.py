"""Step 2: one segmentation expert (ConvNeXt-FPN or nnU-Net) → opacity map and opacity score."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.blending import opacity_score
from operators.lib.results import ExpertResult, run_step
from operators.lib.segmenters import SegmentationExpert, predict_expert


class SegmentationExpertOperator(Operator):
    """Named input: ``cxr`` (CxrImage). Named output: ``expert_result`` (ExpertResult or StepFailure).

    The map is predicted at the model's input size, scored there (:func:`opacity_score`), and
    resized back to the source grid. One instance per expert.
    """

    INPUT, OUTPUT = "cxr", "expert_result"

    def __init__(self, fragment: Fragment, *args, model: SegmentationExpert, **kwargs):
        self._model = model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT)

    def compute(self, op_input, op_output, context) -> None:
        cxr = op_input.receive(self.INPUT)

        def work() -> ExpertResult:
            started = time.perf_counter()
            square_prob, full_prob = predict_expert(self._model, cxr.pixels)
            return ExpertResult(cxr, self._model.name, full_prob, opacity_score(square_prob), time.perf_counter() - started)

        op_output.emit(run_step(f"expert:{self._model.name}", cxr, work), self.OUTPUT)
