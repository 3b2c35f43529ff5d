"""Step 1: the public torchxrayvision classifier's "Lung Opacity" score."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.results import ClassifierResult, first_failure, run_step
from operators.lib.segmenters import XrvOpacityClassifier


class OpacityClassifierOperator(Operator):
    """Named input: ``cxr`` (CxrImage). Named output: ``classifier_result`` (ClassifierResult or StepFailure)."""

    INPUT, OUTPUT = "cxr", "classifier_result"

    def __init__(self, fragment: Fragment, *args, model: XrvOpacityClassifier, **kwargs):
        self._model = model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT)

    def compute(self, op_input, op_output, context) -> None:
        cxr = op_input.receive(self.INPUT)

        def work() -> ClassifierResult:
            started = time.perf_counter()
            score = self._model.predict(cxr.pixels)
            return ClassifierResult(cxr, self._model.name, score, time.perf_counter() - started)

        op_output.emit(first_failure(cxr) or run_step(f"classifier:{self._model.name}", cxr, work), self.OUTPUT)
