"""Lung mask for step 4 (torchxrayvision PSPNet or the project's light U-Net)."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.results import LungResult, run_step


class LungSegmentationOperator(Operator):
    """Named input: ``cxr`` (CxrImage). Named output: ``lung_result`` (LungResult or StepFailure)."""

    INPUT, OUTPUT = "cxr", "lung_result"

    def __init__(self, fragment: Fragment, *args, model, **kwargs):
        self._model = model  # has .name and .predict_mask(H×W image) -> H×W bool
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT)

    def compute(self, op_input, op_output, context) -> None:
        cxr = op_input.receive(self.INPUT)

        def work() -> LungResult:
            started = time.perf_counter()
            mask = self._model.predict_mask(cxr.pixels)
            return LungResult(cxr, self._model.name, mask, time.perf_counter() - started)

        op_output.emit(run_step(f"lung:{self._model.name}", cxr, work), self.OUTPUT)
