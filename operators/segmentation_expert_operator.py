"""Step 2: one segmentation expert (ConvNeXt-FPN or nnU-Net) → opacity map and opacity score."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment

from operators.lib.calibration import ScoreCalibration
from operators.lib.dicom_input import CxrImage
from operators.lib.results import ExpertResult
from operators.lib.segmenters import predict_expert
from operators.lib.steps import expert_score
from operators.per_image_operator import PerImageOperator


class SegmentationExpertOperator(PerImageOperator):
    """Named input: ``cxr`` (CxrImage). Named output: ``expert_result`` (ExpertResult or StepFailure).

    ``model``: a :class:`operators.lib.segmenters.SegmentationExpert`; ``score``: how its image-level
    score is made (:func:`operators.lib.steps.expert_score`, on the map at the model's input size).
    The map is resized back to the source grid. One instance per expert.
    """

    OUTPUT, STEP = "expert_result", "expert"

    def __init__(self, fragment: Fragment, *args, score: ScoreCalibration, **kwargs):
        self._score = score
        super().__init__(fragment, *args, **kwargs)

    def run(self, cxr: CxrImage) -> ExpertResult:
        started = time.perf_counter()
        square_prob, full_prob = predict_expert(self._model, cxr.pixels)
        return ExpertResult(cxr, self._model.name, full_prob, expert_score(square_prob, self._score), time.perf_counter() - started)
