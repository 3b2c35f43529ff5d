"""Step 2: one segmentation expert (ConvNeXt-FPN or nnU-Net) → opacity map and opacity score."""

from __future__ import annotations

import time

from operators.lib.blending import opacity_score
from operators.lib.dicom_input import CxrImage
from operators.lib.results import ExpertResult
from operators.lib.segmenters import predict_expert
from operators.per_image_operator import PerImageOperator


class SegmentationExpertOperator(PerImageOperator):
    """Named input: ``cxr`` (CxrImage). Named output: ``expert_result`` (ExpertResult or StepFailure).

    ``model``: a :class:`operators.lib.segmenters.SegmentationExpert`. The map is predicted at the
    model's input size, scored there (:func:`opacity_score`), and resized back to the source grid.
    One instance per expert.
    """

    OUTPUT, STEP = "expert_result", "expert"

    def run(self, cxr: CxrImage) -> ExpertResult:
        started = time.perf_counter()
        square_prob, full_prob = predict_expert(self._model, cxr.pixels)
        return ExpertResult(cxr, self._model.name, full_prob, opacity_score(square_prob), time.perf_counter() - started)
