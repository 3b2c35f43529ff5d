"""Export every network of a models folder to ONNX, next to its native files, and list the graphs in the manifest.

Run at build time (``deploy/build_context.py`` does it on the MAP's copy of the pack), never at start-up::

    python -m app.export_graphs MODELS [--tolerance 1e-3] [--remove]

For each model whose wrapper can swap its network (every architecture but torchxrayvision's PSPNet),
the network is loaded from the native files exactly as the app loads it, exported for the input
shape the app feeds it (:mod:`operators.lib.onnx_graphs`), run once with ONNX Runtime on a seeded
input and compared with torch. A graph whose raw outputs differ by more than ``--tolerance`` is
deleted and not listed. The manifest's ``graphs.onnx`` gets the file, its sha256, the input shape,
the opset and the measured difference. The app (``--runtime auto``) uses a graph only when its
sha256 matches; the native files stay the source of truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from app.model_store import MANIFEST_NAME, load_models, resolves_inside, sha256_of
from operators.lib.atomic_file import write_json_atomically
from operators.lib.errors import ModelFolderError
from operators.lib.onnx_graphs import GRAPH_FILE, OPSET, GraphEntry, export_graph, max_abs_diff, open_session

logger = logging.getLogger(__name__)
#: largest |torch − ONNX Runtime| on a network's raw outputs (logits) that a graph may have: a logit
#: difference d moves a sigmoid probability by at most d/4 and a two-class softmax by at most d/2.
DEFAULT_TOLERANCE = 1e-3


def export_graphs(folder: Path, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, GraphEntry | None]:
    """Export and list every exportable network of ``folder``; returns name → entry (None: not exported)."""
    folder = Path(folder)
    models = load_models(folder, runtime="torch")
    wrappers = {wrapper.name: wrapper for wrapper in (models.classifier, *models.experts, models.refinement, models.lung)}
    manifest_path = folder / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    entries: dict[str, GraphEntry | None] = {}
    for card in models.manifest.models:
        wrapper = wrappers[card.name]
        data["models"][card.name].pop("graphs", None)
        entries[card.name] = None
        if not hasattr(wrapper, "graph_target"):
            logger.info("%s (%s): no ONNX export for this architecture; it runs on torch.", card.name, card.architecture.value)
            continue
        network, shape = wrapper.graph_target()
        path = folder / card.name / GRAPH_FILE
        export_graph(network, shape, path)
        path.chmod(0o644)
        diff = max_abs_diff(network, open_session(path, 1), shape)
        if not diff <= tolerance:
            path.unlink()
            logger.warning("%s: ONNX Runtime differs from torch by %.2g (> %.2g); not listed, it runs on torch.", card.name, diff, tolerance)
            continue
        entries[card.name] = GraphEntry(GRAPH_FILE, sha256_of(path), tuple(shape), OPSET, diff)
        data["models"][card.name]["graphs"] = {"onnx": entries[card.name].to_dict()}
        logger.info("%s: exported %s (input %s, max |torch − ORT| %.2g)", card.name, path, list(shape), diff)
    write_json_atomically(data, manifest_path)
    return entries


def remove_graphs(folder: Path) -> None:
    """Delete every listed graph and its manifest entry (the pack as training wrote it)."""
    manifest_path = Path(folder) / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    for name, entry in data["models"].items():
        graph = (entry.pop("graphs", None) or {}).get("onnx")
        if graph:
            path = Path(folder) / name / str(graph["file"])
            if resolves_inside(path, Path(folder) / name):  # never delete outside the model's folder, whatever the manifest says
                path.unlink(missing_ok=True)
    write_json_atomically(data, manifest_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.export_graphs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, help="models folder with manifest.json (changed in place)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest |torch − ONNX Runtime| on raw outputs a listed graph may have (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--remove", action="store_true", help="delete the graphs and their manifest entries instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.remove:
            remove_graphs(args.models)
        else:
            export_graphs(args.models, args.tolerance)
    except (ModelFolderError, FileNotFoundError, json.JSONDecodeError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
