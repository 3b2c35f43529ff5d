"""Step 4: blend the four maps (Zones or Weighted) and apply the lung prior."""

from __future__ import annotations

import time

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from app.presets import BlendMode, Preset
from operators.lib.blending import lung_postprocess, weighted_blend, zones_blend
from operators.lib.results import FinalResult, LungResult, RefinementResult, first_failure, run_step, same_case


class BlendOperator(Operator):
    """Named inputs: ``refinement`` (RefinementResult), ``lung_result`` (LungResult).
    Named output: ``final`` (FinalResult or StepFailure).

    Positive study: blend the three expert maps and the refined map, then the lung prior (two
    passes). Negative study: the lung prior alone on an empty map (one pass). See app/presets.py.
    """

    REFINEMENT, LUNG, OUTPUT = "refinement", "lung_result", "final"

    def __init__(self, fragment: Fragment, *args, preset: Preset, blend_weights: dict[str, float], **kwargs):
        self._preset = preset
        self._weights = dict(blend_weights)  # map name -> weight (sum 1), for BlendMode.WEIGHTED
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.REFINEMENT)
        spec.input(self.LUNG)
        spec.output(self.OUTPUT)

    def blend(self, refinement: RefinementResult, lung: LungResult) -> FinalResult:
        """The step itself, callable without a graph."""
        started = time.perf_counter()
        same_case(refinement, lung)
        preset, gate = self._preset, refinement.gate
        image_shape = gate.case.shape
        weights_used: dict[str, float] = {}
        if gate.positive:
            maps = {e.model_name: e.prob_map for e in gate.experts}
            maps[refinement.model_name] = refinement.prob_map
            if preset.blend is BlendMode.ZONES:
                blended = zones_blend(list(maps.values()), preset.zone_values, preset.mask_threshold)
            else:
                weights_used = {name: self._weights[name] for name in maps}
                blended = weighted_blend(list(maps.values()), list(weights_used.values()))
        else:
            blended = np.zeros(image_shape, dtype=np.float32)
        passes, background = preset.lung_prior.passes(gate.positive, min(image_shape))
        final = lung_postprocess(blended, lung.mask, passes, background)
        opacity_mask = final >= preset.binary_threshold
        return FinalResult(refinement, lung, final, opacity_mask, preset.blend.value, weights_used, time.perf_counter() - started)

    def compute(self, op_input, op_output, context) -> None:
        refinement = op_input.receive(self.REFINEMENT)
        lung = op_input.receive(self.LUNG)
        failure = first_failure(refinement, lung)
        op_output.emit(failure or run_step("blend", refinement.case, lambda: self.blend(refinement, lung)), self.OUTPUT)
