"""Step 3: refine positive studies: union of expert masks → components → crops → nnU-Net → paste back."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from app.presets import Preset
from operators.lib.components import component_boxes, pad_box, refine_regions, union_mask
from operators.lib.results import GateDecision, RefinementResult, first_failure, run_step
from operators.lib.segmenters import SegmentationExpert


class RefinementOperator(Operator):
    """Named input: ``gate`` (GateDecision). Named output: ``refinement`` (RefinementResult or StepFailure).

    Negative studies pass through with no refined map (the write-up skips step 3 for them).
    """

    INPUT, OUTPUT = "gate", "refinement"

    def __init__(self, fragment: Fragment, *args, model: SegmentationExpert, preset: Preset, **kwargs):
        self._model = model
        self._preset = preset
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT)

    def refine(self, gate: GateDecision) -> RefinementResult:
        """The step itself, callable without a graph (tests, benchmark)."""
        started = time.perf_counter()
        if not gate.positive:
            return RefinementResult(gate, self._model.name, None, (), 0.0)
        preset, image = self._preset, gate.case.pixels
        shorter = min(image.shape)
        union = union_mask([e.prob_map for e in gate.experts], preset.mask_threshold)
        boxes = component_boxes(union, preset.max_components, min_area_px=int(preset.min_component_fraction * image.size))
        padded = [pad_box(b, image.shape, preset.crop_pad_fraction, int(preset.min_crop_fraction * shorter)) for b in boxes]
        refined = refine_regions(image, padded, self._model.predict_square, self._model.input_size_px)
        return RefinementResult(gate, self._model.name, refined, tuple(tuple(b.as_list()) for b in padded), time.perf_counter() - started)

    def compute(self, op_input, op_output, context) -> None:
        gate = op_input.receive(self.INPUT)
        op_output.emit(first_failure(gate) or run_step(f"refinement:{self._model.name}", gate.case, lambda: self.refine(gate)), self.OUTPUT)
