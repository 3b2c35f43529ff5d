"""ONNX graphs exported at build time (app.export_graphs) and run by the app: same maps as torch, verified before use."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.export_graphs import DEFAULT_TOLERANCE, export_graphs, main
from app.model_store import MANIFEST_NAME, load_models, read_manifest, sha256_of
from operators.lib.dicom_input import load_cxr
from operators.lib.errors import ModelFolderError
from operators.lib.segmenters import predict_expert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph_pack(random_pack, tmp_path_factory) -> Path:
    """The random pack with every graph exported (a copy: the export changes the folder in place)."""
    folder = tmp_path_factory.mktemp("graphs") / "pack"
    shutil.copytree(random_pack, folder)
    export_graphs(folder)
    return folder


@pytest.fixture(scope="module")
def reference_graph_pack(tmp_path_factory) -> Path:
    """The committed reference pack (trained weights) with its graphs exported, as the MAP build does."""
    if not (REPO / "models" / MANIFEST_NAME).is_file():
        pytest.skip("models/ holds no pack")
    folder = tmp_path_factory.mktemp("reference_graphs") / "pack"
    shutil.copytree(REPO / "models", folder, ignore=shutil.ignore_patterns("*.md"))
    export_graphs(folder)
    return folder


@pytest.fixture(scope="module")
def both(reference_graph_pack):
    return load_models(reference_graph_pack, runtime="torch"), load_models(reference_graph_pack, runtime="auto")


def test_every_network_is_exported_listed_with_its_sha256_and_its_measured_difference(graph_pack):
    manifest = read_manifest(graph_pack)
    torch_models = load_models(graph_pack, runtime="torch")
    wrappers = {w.name: w for w in (torch_models.classifier, *torch_models.experts, torch_models.refinement, torch_models.lung)}
    for card in manifest.models:
        assert card.graph is not None, card.name
        path = graph_pack / card.name / card.graph.file
        assert sha256_of(path) == card.graph.sha256
        assert card.graph.input_shape == tuple(wrappers[card.name].graph_target()[1])
        assert 0.0 <= card.graph.max_abs_diff <= DEFAULT_TOLERANCE
        assert card.graph.file not in card.files  # an accelerator, not one of the verified native files


def test_auto_runs_every_listed_graph_and_torch_runs_none(graph_pack):
    torch_models, onnx_models = load_models(graph_pack, runtime="torch"), load_models(graph_pack, runtime="auto")
    assert set(torch_models.runtimes.values()) == {"torch"}
    assert set(onnx_models.runtimes.values()) == {"onnxruntime"}
    assert type(onnx_models.experts[0].graph_target()[0]).__name__ == "OnnxNetwork"
    assert type(torch_models.experts[0].graph_target()[0]).__name__ != "OnnxNetwork"
    card = next(c for c in read_manifest(graph_pack).models if c.name == onnx_models.experts[0].name)
    assert repr(onnx_models.experts[0].graph_target()[0]) == f"OnnxNetwork(source={graph_pack / card.name / card.graph.file})"
    options = onnx_models.experts[0].graph_target()[0].session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0", "ONNX Runtime's threads spin between runs"
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert options.enable_mem_pattern is False, "each session would keep a block the size of its activation plan"


@pytest.mark.parametrize("source", ["examples/rsna_cr_00436515.dcm", "misc/nema_wg04_RG1_UNCR.dcm"])
def test_onnx_maps_match_the_torch_maps_on_real_images(both, source, dicom_dir):
    """With the trained weights: every expert's map, the refinement map on a crop and the classifier
    output within 1e-3 of torch (measured: ≤ 2e-4); the lung mask (a threshold of a probability) on all
    but a few boundary pixels. (Random-initialised nnU-Nets have larger activations: their maps can
    differ by ~1e-3, which is why this test uses the reference pack.)"""
    torch_models, onnx_models = both
    assert set(onnx_models.runtimes.values()) == {"onnxruntime"}
    path = REPO / source if source.startswith("examples/") else dicom_dir / source
    image = load_cxr(path, "case").pixels
    for reference, candidate in zip(torch_models.experts, onnx_models.experts):
        square_t, full_t = predict_expert(reference, image)
        square_o, full_o = predict_expert(candidate, image)
        assert np.abs(full_t - full_o).max() <= 1e-3, reference.name
        assert np.abs(square_t - square_o).max() <= 1e-3, reference.name
    h, w = image.shape
    crop = image[h // 4: h // 4 + h // 3, w // 5: w // 5 + w // 3]
    assert np.abs(predict_expert(torch_models.refinement, crop)[1] - predict_expert(onnx_models.refinement, crop)[1]).max() <= 1e-3
    assert abs(torch_models.classifier.predict(image) - onnx_models.classifier.predict(image)) <= 1e-3
    lung_t, lung_o = torch_models.lung.predict_mask(image), onnx_models.lung.predict_mask(image)
    assert (lung_t != lung_o).mean() <= 1e-3


def test_an_altered_graph_is_not_used_and_the_others_are(graph_pack, tmp_path, caplog):
    folder = tmp_path / "pack"
    shutil.copytree(graph_pack, folder)
    victim = read_manifest(folder).models[1].name  # the ConvNeXt expert
    graph = folder / victim / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="app.model_store"):
        models = load_models(folder)
    assert models.runtimes[victim] == "torch"
    assert all(runtime == "onnxruntime" for name, runtime in models.runtimes.items() if name != victim)
    assert str(graph) in caplog.text and "sha256" in caplog.text
    graph.unlink()
    assert load_models(folder).runtimes[victim] == "torch"  # missing: torch again, no error


def test_a_graph_for_another_input_shape_is_not_used(graph_pack, tmp_path):
    folder = tmp_path / "pack"
    shutil.copytree(graph_pack, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    names = list(manifest["models"])
    convnext = next(n for n in names if manifest["models"][n]["architecture"] == "convnext-fpn")
    lung = next(n for n in names if manifest["models"][n]["role"] == "lung")
    shutil.copy(folder / lung / "model.onnx", folder / convnext / "model.onnx")  # a valid graph, the wrong network
    manifest["models"][convnext]["graphs"]["onnx"]["sha256"] = sha256_of(folder / convnext / "model.onnx")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_models(folder).runtimes[convnext] == "torch"


@pytest.mark.parametrize("entry, message", [({"file": "model.onnx"}, "graphs.onnx needs"),
                                            ({"file": "../x.onnx", "sha256": "a" * 64, "input_shape": [1, 1, 8, 8], "opset": 17},
                                             "must stay inside"),
                                            ({"file": "model.onnx", "sha256": "abc", "input_shape": [1], "opset": 17}, "malformed")])
def test_a_malformed_graph_entry_is_refused_naming_the_model(graph_pack, tmp_path, entry, message):
    folder = tmp_path / "pack"
    shutil.copytree(graph_pack, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    name = next(iter(manifest["models"]))
    manifest["models"][name]["graphs"] = {"onnx": entry}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=message) as raised:
        read_manifest(folder)
    assert repr(name) in str(raised.value)


def test_a_graph_beyond_the_tolerance_is_not_listed_and_remove_restores_the_pack(random_pack, tmp_path):
    folder = tmp_path / "pack"
    shutil.copytree(random_pack, folder)
    before = json.loads((folder / MANIFEST_NAME).read_text())
    entries = export_graphs(folder, tolerance=-1.0)
    assert set(entries.values()) == {None}
    assert not list(folder.glob("*/model.onnx"))
    assert main([str(folder)]) == 0
    assert len(list(folder.glob("*/model.onnx"))) == len(before["models"])
    assert main([str(folder), "--remove"]) == 0
    assert json.loads((folder / MANIFEST_NAME).read_text()) == before
    assert not list(folder.glob("*/model.onnx"))


def test_an_unknown_runtime_is_a_configuration_error(monkeypatch, tmp_path, random_pack):
    from app.cli import main as app_main
    from operators.lib.run_report import ExitCode

    (tmp_path / "in").mkdir()
    monkeypatch.setenv("CXR_OPACITY_RUNTIME", "tensorrt")
    assert app_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(random_pack)]) == int(ExitCode.CONFIGURATION)
    with pytest.raises(ValueError, match="runtime"):
        load_models(random_pack, runtime="tensorrt")


def test_loading_a_graph_gives_the_freed_torch_weights_back_to_the_os(graph_pack, monkeypatch):
    """After each network swapped for its graph the C heap is trimmed (the torch weights' pages went
    back to glibc, not to the OS: 1 GB of RSS with the production graphs); on torch nothing is swapped."""
    import app.model_store as model_store

    calls = []
    real = model_store.release_freed_memory
    monkeypatch.setattr(model_store, "release_freed_memory", lambda: calls.append(1) or real())
    models = load_models(graph_pack, runtime="auto")
    assert len(calls) == sum(r == "onnxruntime" for r in models.runtimes.values()) > 0
    calls.clear()
    load_models(graph_pack, runtime="torch")
    assert calls == []


def test_release_freed_memory_returns_pages_glibc_kept():
    """Many small blocks freed below one still in use stay in the process until trimmed."""
    import ctypes.util

    import psutil

    from app.model_store import release_freed_memory

    if not ctypes.util.find_library("c") or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim"):
        pytest.skip("not glibc")
    blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # 300 MB of 100 kB blocks: below mmap's threshold, on the heap
    pin = np.ones(100_000 // 8)  # above them: the heap's top stays in use, so free() alone cannot shrink it
    del blocks
    before = psutil.Process().memory_info().rss
    assert release_freed_memory()
    after = psutil.Process().memory_info().rss
    assert before - after > 200 * 2**20, (before, after)
    del pin
