"""Lung mask for step 4 (torchxrayvision PSPNet or the project's light U-Net)."""

from __future__ import annotations

import time

from operators.lib.dicom_input import CxrImage
from operators.lib.results import LungResult
from operators.per_image_operator import PerImageOperator


class LungSegmentationOperator(PerImageOperator):
    """Named input: ``cxr`` (CxrImage). Named output: ``lung_result`` (LungResult or StepFailure).

    ``model``: has ``.name`` and ``.predict_mask(H×W image) -> H×W bool``.
    """

    OUTPUT, STEP = "lung_result", "lung"

    def run(self, cxr: CxrImage) -> LungResult:
        started = time.perf_counter()
        mask = self._model.predict_mask(cxr.pixels)
        return LungResult(cxr, self._model.name, mask, time.perf_counter() - started)
