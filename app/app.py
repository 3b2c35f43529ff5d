"""The application graph: composition only (see operators/ for the steps, app/presets.py for knobs).

Inputs: a folder of DICOM files (recursively). Outputs, per frontal chest radiograph: a FRACTIONAL
(probability) and a BINARY DICOM SEG, a preview PNG and result.json; plus summary.json for the run.
Models: the models folder described by its manifest.json (app/model_store.py). Research use only,
not for clinical use.

Graph (one image per tick; the four classifiers and the lung model all read the same image)::

    input ─┬─ classifier ─────────┐
           ├─ expert 1 (ConvNeXt) ─┤
           ├─ expert 2 (nnU-Net) ──┼─ gate ─ refinement ─┐
           ├─ expert 3 (nnU-Net) ──┘                     ├─ blend ─ writer
           └─ lung ──────────────────────────────────────┘
"""

from __future__ import annotations

from holoscan.conditions import BooleanCondition
from monai.deploy.core import Application

from app.run_plan import RunPlan
from operators.blend_operator import BlendOperator
from operators.dicom_input_operator import DicomCxrInputOperator
from operators.lung_segmentation_operator import LungSegmentationOperator
from operators.opacity_classifier_operator import OpacityClassifierOperator
from operators.opacity_gate_operator import OpacityGateOperator
from operators.refinement_operator import RefinementOperator
from operators.seg_writer_operator import SegWriterOperator
from operators.segmentation_expert_operator import SegmentationExpertOperator


class LungOpacityApp(Application):
    """Chest X-ray lung opacity: the write-up's four steps as one MONAI Deploy graph."""

    def __init__(self, plan: RunPlan, *args, **kwargs):
        self._plan = plan
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        plan, models, settings = self._plan, self._plan.models, self._plan.settings
        source = DicomCxrInputOperator(self, BooleanCondition(self, name="more_input"), input_folder=plan.input_folder,
                                       ledger=plan.ledger, read_ahead=plan.read_ahead, name="dicom_input")
        classifier = OpacityClassifierOperator(self, model=models.classifier, score=settings.score(models.classifier.name, classifier=True),
                                               name="opacity_classifier")
        experts = [SegmentationExpertOperator(self, model=m, score=settings.score(m.name), name=f"expert_{m.name}") for m in models.experts]
        lung = LungSegmentationOperator(self, model=models.lung, name="lung_segmentation")
        gate = OpacityGateOperator(self, threshold=settings.gate_threshold, name="opacity_gate")
        refinement = RefinementOperator(self, model=models.refinement, preset=settings.preset, name="refinement")
        blend = BlendOperator(self, settings=settings, name="blend")
        writer = SegWriterOperator(self, output_folder=plan.output_folder, ledger=plan.ledger, algorithm=plan.algorithm,
                                   model_versions=models.versions(), writer_threads=plan.writer_threads, name="seg_writer")

        self.add_flow(source, classifier, {("cxr", "cxr")})
        self.add_flow(source, lung, {("cxr", "cxr")})
        self.add_flow(classifier, gate, {("classifier_result", "classifier_result")})
        for expert, port in zip(experts, OpacityGateOperator.EXPERTS):
            self.add_flow(source, expert, {("cxr", "cxr")})
            self.add_flow(expert, gate, {("expert_result", port)})
        self.add_flow(gate, refinement, {("gate", "gate")})
        self.add_flow(refinement, blend, {("refinement", "refinement")})
        self.add_flow(lung, blend, {("lung_result", "lung_result")})
        self.add_flow(blend, writer, {("final", "final")})
