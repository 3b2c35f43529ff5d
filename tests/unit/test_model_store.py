"""The models folder contract: manifest validation, checksums before loading, real-format loaders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.model_store import load_models, read_manifest, verify_files
from operators.lib.errors import ModelFolderError
from operators.lib.segmenters import XrvLungSegmenter
from app.model_formats import write_xrv_pspnet
from tools.random_model_pack import build_random_pack


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return build_random_pack(tmp_path_factory.mktemp("models") / "pack")


@pytest.fixture
def pack_copy(pack, tmp_path) -> Path:
    return Path(shutil.copytree(pack, tmp_path / "pack"))


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_random_pack_loads_every_role(pack):
    models = load_models(pack)
    assert models.classifier.name == "xrv_densenet121_all"
    assert [e.name for e in models.experts] == ["convnext_fpn_clip_336", "nnunet_2d_336", "nnunet_2d_768"]
    assert models.refinement.name == "nnunet_refine_256" and models.lung.name == "lung_unet_128"
    image = np.random.default_rng(0).random((300, 260), dtype=np.float32)
    assert 0.0 <= models.classifier.predict(image) <= 1.0
    for expert in models.experts + [models.refinement]:
        prob = expert.predict_square(np.zeros((expert.input_size_px,) * 2, np.float32) + 0.5)
        assert prob.shape == (expert.input_size_px,) * 2 and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert models.lung.predict_mask(image).shape == (300, 260)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ModelFolderError, match=r"manifest.json: missing"):
        read_manifest(tmp_path)


def test_missing_role_is_reported(pack_copy):
    _edit_manifest(pack_copy, lambda d: d["models"].pop("nnunet_2d_768"))
    with pytest.raises(ModelFolderError, match=r"needs 3 model\(s\) with role 'expert'; found 2"):
        read_manifest(pack_copy)


def test_wrong_format_for_an_architecture_is_refused(pack_copy):
    _edit_manifest(pack_copy, lambda d: d["models"]["nnunet_2d_336"].update(format="safetensors+config"))
    with pytest.raises(ModelFolderError, match="a nnunet-2d is stored as 'nnunetv2-trained-model-folder'"):
        read_manifest(pack_copy)


def test_checksum_mismatch_names_the_file(pack_copy):
    target = pack_copy / "convnext_fpn_clip_336" / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelFolderError, match=r"convnext_fpn_clip_336/model.safetensors: sha256 .* differs"):
        verify_files(read_manifest(pack_copy))


def test_missing_listed_file_is_named(pack_copy):
    (pack_copy / "nnunet_refine_256" / "plans.json").unlink()
    with pytest.raises(ModelFolderError, match=r"nnunet_refine_256/plans.json: missing"):
        load_models(pack_copy)


def test_checksums_are_verified_before_anything_is_unpickled(pack_copy, monkeypatch):
    weights = pack_copy / "nnunet_2d_336" / "fold_0" / "checkpoint_final.pth"  # the one pickled format left
    weights.write_bytes(weights.read_bytes() + b"tampered")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError("unpickled")))
    with pytest.raises(ModelFolderError, match="sha256"):
        load_models(pack_copy)
    assert calls == []


def test_xrv_classifier_is_a_state_dict_that_loads_without_unpickling(pack_copy, monkeypatch):
    from operators.lib.segmenters import XrvOpacityClassifier

    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
    classifier = XrvOpacityClassifier("x", pack_copy / "xrv_densenet121_all", torch.device("cpu"))
    assert classifier.network.targets[classifier.label_index] == "Lung Opacity"
    assert float(classifier.network.op_threshs[classifier.label_index]) == pytest.approx(0.20204692)


def test_xrv_public_pickle_converts_to_the_state_dict_format(tmp_path):
    """xrv publishes whole pickled models: the converter turns one into config + safetensors with the same outputs."""
    from operators.lib.segmenters import XrvOpacityClassifier, import_xrv
    from tools.convert_xrv_densenet import convert

    torch.manual_seed(3)
    public = import_xrv().models.DenseNet(num_classes=18).eval()
    torch.save(public, tmp_path / "public.pt")
    folder = convert(tmp_path / "public.pt", tmp_path / "converted")
    classifier = XrvOpacityClassifier("x", folder, torch.device("cpu"))
    image = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    from operators.lib.preprocessing import xrv_input

    with torch.inference_mode():
        public.op_threshs = classifier.network.op_threshs
        expected = float(public(torch.from_numpy(xrv_input(image, 224)))[0, 16].clamp(0, 1))
    assert classifier.predict(image) == pytest.approx(expected, abs=1e-6)


def test_xrv_pspnet_loads_from_its_real_file_format(tmp_path):
    """The public PSPNet lung model: xrv's file name, a DataParallel state dict, loaded by xrv's own class."""
    folder = write_xrv_pspnet(tmp_path / "xrv_pspnet_lungs")
    lungs = XrvLungSegmenter("xrv_pspnet_lungs", folder, torch.device("cpu"))
    mask = lungs.predict_mask(np.random.default_rng(1).random((600, 500), dtype=np.float32))
    assert mask.shape == (600, 500) and mask.dtype == bool


def test_zone_values_must_be_five_probabilities(pack_copy):
    assert read_manifest(pack_copy).calibration.zone_values == (0.0, 0.3, 0.5, 0.7, 0.9)
    _edit_manifest(pack_copy, lambda d: d["calibration"].update(zone_values=[0.1, 0.2]))
    with pytest.raises(ModelFolderError, match="five values in"):
        read_manifest(pack_copy)
