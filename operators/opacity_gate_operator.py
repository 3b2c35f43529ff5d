"""Steps 1+2 decision: the mean of the four classifiers' scores against the threshold."""

from __future__ import annotations

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.lib.results import GateDecision, StepFailure, first_failure, run_step, same_case
from operators.lib.steps import gate

logger = logging.getLogger(__name__)


class OpacityGateOperator(Operator):
    """Named inputs: ``classifier_result`` and ``expert_1`` … ``expert_3`` (ExpertResult).
    Named output: ``gate`` (GateDecision or StepFailure).
    """

    CLASSIFIER, EXPERTS, OUTPUT = "classifier_result", ("expert_1", "expert_2", "expert_3"), "gate"

    def __init__(self, fragment: Fragment, *args, threshold: float, **kwargs):
        self._threshold = float(threshold)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.CLASSIFIER)
        for name in self.EXPERTS:
            spec.input(name)
        spec.output(self.OUTPUT)

    def decide(self, classifier, experts) -> GateDecision | StepFailure:
        """This operator's work for one image, callable without a graph: a failure upstream passes
        through; otherwise the mean of the four scores against the run's threshold."""
        experts = tuple(experts)
        failure = first_failure(classifier, *experts)
        if failure is not None:
            return failure

        def work() -> GateDecision:
            same_case(classifier, *experts)
            outcome = gate([classifier.score] + [e.score for e in experts], self._threshold)
            logger.info("%s: mean opacity score %.3f vs %.3f → positive: %s", classifier.case.case_id, outcome.mean_score, outcome.threshold, outcome.positive)
            return GateDecision(classifier.case, classifier, experts, outcome.mean_score, outcome.threshold, outcome.positive)

        return run_step("gate", classifier.case, work)

    def compute(self, op_input, op_output, context) -> None:
        classifier = op_input.receive(self.CLASSIFIER)
        experts = tuple(op_input.receive(name) for name in self.EXPERTS)
        op_output.emit(self.decide(classifier, experts), self.OUTPUT)
