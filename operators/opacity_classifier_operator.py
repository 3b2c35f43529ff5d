"""Step 1: the public torchxrayvision classifier's "Lung Opacity" score."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment

from operators.lib.calibration import ScoreCalibration
from operators.lib.dicom_input import CxrImage
from operators.lib.results import ClassifierResult
from operators.lib.steps import classifier_score
from operators.per_image_operator import PerImageOperator


class OpacityClassifierOperator(PerImageOperator):
    """Named input: ``cxr`` (CxrImage). Named output: ``classifier_result`` (ClassifierResult or StepFailure).

    ``model``: an :class:`operators.lib.segmenters.XrvOpacityClassifier`; ``score``: how its output
    becomes the gate's score (:func:`operators.lib.steps.classifier_score`).
    """

    OUTPUT, STEP = "classifier_result", "classifier"

    def __init__(self, fragment: Fragment, *args, score: ScoreCalibration, **kwargs):
        self._score = score
        super().__init__(fragment, *args, **kwargs)

    def run(self, cxr: CxrImage) -> ClassifierResult:
        started = time.perf_counter()
        score = classifier_score(self._model.predict(cxr.pixels), self._score)
        return ClassifierResult(cxr, self._model.name, score, time.perf_counter() - started)
