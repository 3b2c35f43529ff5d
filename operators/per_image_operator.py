"""Base of the operators that run one model on each decoded image (classifier, experts, lungs)."""

from __future__ import annotations

from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.dicom_input import CxrImage
from operators.lib.results import run_step


class PerImageOperator(Operator):
    """Named input: ``cxr`` (CxrImage). Named output: ``OUTPUT`` (the subclass's result or a StepFailure).

    Subclasses set ``OUTPUT`` and ``STEP`` and implement :meth:`run`; a raised exception becomes a
    StepFailure for that image only.
    """

    INPUT = "cxr"
    OUTPUT: str
    STEP: str

    def __init__(self, fragment: Fragment, *args, model: Any, **kwargs):
        self._model = model  # built once by app/model_store.py
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)
        spec.output(self.OUTPUT)

    def run(self, cxr: CxrImage) -> Any:
        """This step's result for one image."""
        raise NotImplementedError

    def compute(self, op_input, op_output, context) -> None:
        cxr = op_input.receive(self.INPUT)
        op_output.emit(run_step(f"{self.STEP}:{self._model.name}", cxr, lambda: self.run(cxr)), self.OUTPUT)
