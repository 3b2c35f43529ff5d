"""ONNX graphs of the networks, exported at build time and run with ONNX Runtime on CPU.

The native files (safetensors, nnU-Net checkpoints) stay the source of truth: a graph is an export of
one network's forward pass, listed in ``manifest.json`` under the model's ``graphs.onnx`` with its
sha256, the input shape it was exported for and the largest difference from the torch output
measured at export. The wrappers of :mod:`operators.lib.segmenters` keep their own pre- and
post-processing and only swap the network for :class:`OnnxNetwork`, so both runtimes share every
line of the method except the forward pass itself.

Manifest entry (written by :mod:`app.export_graphs`)::

    "graphs": {"onnx": {"file": "model.onnx", "sha256": "…", "input_shape": [1, 1, 336, 336],
                        "opset": 17, "max_abs_diff": 3.6e-05, "exported_with": "torch 2.x"}}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

GRAPH_FILE = "model.onnx"
OPSET = 17
#: the runtime names reported in summary.json
TORCH, ONNXRUNTIME = "torch", "onnxruntime"


@dataclass(frozen=True)
class GraphEntry:
    """``graphs.onnx`` of one manifest entry."""

    file: str
    sha256: str
    input_shape: tuple[int, ...]
    opset: int
    max_abs_diff: float

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "GraphEntry":
        """Parse ``graphs.onnx``; a malformed entry is a ``ValueError`` naming ``where``."""
        try:
            entry = cls(file=str(data["file"]), sha256=str(data["sha256"]).lower(),
                        input_shape=tuple(int(v) for v in data["input_shape"]), opset=int(data["opset"]),
                        max_abs_diff=float(data.get("max_abs_diff", float("nan"))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: graphs.onnx needs file, sha256, input_shape and opset ({exc!r}).") from None
        if len(entry.sha256) != 64 or not entry.input_shape:
            raise ValueError(f"{where}: graphs.onnx has a malformed sha256 or input_shape.")
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "input_shape": list(self.input_shape), "opset": self.opset,
                "max_abs_diff": self.max_abs_diff, "exported_with": f"torch {torch.__version__}"}


def export_graph(network: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """Export ``network``'s forward for one fixed input shape (batch axis dynamic) to ``path``."""
    network = network.eval()
    example = torch.zeros(input_shape, dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(network, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def open_session(path: Path, threads: int):
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (one inter-op).

    Its threads do not spin after a run: by default they busy-wait for the next one, and in the app the
    next work is torch, numpy and the writer thread, which then share the cores with spinning threads
    (measured: the ConvNeXt step 0.67 s for a 0.24 s forward, the writer 0.95 s against 0.55 s on torch;
    ``docs/benchmark.md`` §0.1).

    Nor does it keep a memory pattern: with it, each of the app's six sessions holds a block the size of
    its whole activation plan after its first run (0.5 GB of peak RSS over a run, §0); without it the
    session allocates from its arena as it goes, at the same speed (measured: nnU-Net 768 0.705–0.715 s
    either way)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxNetwork(torch.nn.Module):
    """A torch module whose forward runs an ONNX Runtime session (CPU tensors in and out).

    It stands in for the network inside a wrapper (and inside nnU-Net's predictor, which calls
    ``network(x)``, ``.to`` and ``.eval`` on it), so pre- and post-processing stay the torch path's.
    """

    def __init__(self, session, source: Path):
        super().__init__()
        self.session, self.source = session, Path(source)
        self.input_name = session.get_inputs()[0].name

    def extra_repr(self) -> str:
        """``print(network)`` names the graph file that runs (``OnnxNetwork(source=…/model.onnx)``)."""
        return f"source={self.source}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def max_abs_diff(network: torch.nn.Module, session, input_shape: tuple[int, ...], seed: int = 0) -> float:
    """Largest |torch − ONNX Runtime| over the outputs for one seeded input in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(input_shape, generator=generator)
    with torch.no_grad():
        reference = network.eval()(x)
    if isinstance(reference, (list, tuple)):
        reference = reference[0]
    output = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(output - reference.float().numpy()).max())
