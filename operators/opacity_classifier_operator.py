"""Step 1: the public torchxrayvision classifier's "Lung Opacity" score."""

from __future__ import annotations

import time

from operators.lib.dicom_input import CxrImage
from operators.lib.results import ClassifierResult
from operators.per_image_operator import PerImageOperator


class OpacityClassifierOperator(PerImageOperator):
    """Named input: ``cxr`` (CxrImage). Named output: ``classifier_result`` (ClassifierResult or StepFailure).

    ``model``: an :class:`operators.lib.segmenters.XrvOpacityClassifier`.
    """

    OUTPUT, STEP = "classifier_result", "classifier"

    def run(self, cxr: CxrImage) -> ClassifierResult:
        started = time.perf_counter()
        score = self._model.predict(cxr.pixels)
        return ClassifierResult(cxr, self._model.name, score, time.perf_counter() - started)
