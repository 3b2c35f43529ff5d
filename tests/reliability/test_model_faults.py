"""Model-folder faults: a missing or corrupt model file stops the app before any input is read.

Also the review of how each model file is loaded: every checksum is verified before the first
loader runs (shown with loaders that fail the test if called), and ``weights_only`` unpickling is
used wherever the format allows it:

================================  ==========================================  =====================
model format                      loaded by                                   unpickling
================================  ==========================================  =====================
safetensors + config.json         ``safetensors.torch.load_file`` (ours)      none (no pickle)
(the xrv DenseNet too: xrv's public pickled weights are converted once by ``tools/convert_xrv_densenet.py``)
torchxrayvision PSPNet state dict xrv ``PSPNet`` → ``torch.load``             weights_only=True (xrv)
nnU-Net v2 ``checkpoint_final``   nnU-Net's ``initialize_from_trained_        weights_only=False (nnU-Net
                                  model_folder`` → ``torch.load``             stores numpy/str objects)
================================  ==========================================  =====================

The nnU-Net checkpoints, the only ``weights_only=False`` files, are exactly why the sha256 check must
come first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataclasses import replace

from app import model_formats
from app.model_store import MANIFEST_NAME, load_models, read_manifest
from operators.lib.errors import ModelFolderError
from tests.support.app_runner import io_args, run_app


def _copy_pack(pack: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    return copy


def _last_listed_file(pack: Path) -> Path:
    """The last file of the last model in manifest order: a loader interleaved with verification would
    have loaded every other model before reaching it."""
    manifest = read_manifest(pack)
    card = manifest.models[-1]
    return pack / card.name / sorted(card.files)[-1]


class _Forbidden(AssertionError):
    pass


@pytest.fixture
def loaders_forbidden(monkeypatch):
    """Every way a model file gets opened by the loaders fails the test if reached."""
    import safetensors.torch
    import torch

    from operators.lib import segmenters

    calls: list[str] = []

    def forbidden(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise _Forbidden(f"{name} called before the checksums were verified: {args[:1]}")

        return fail

    monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden("safetensors.load_file"))
    monkeypatch.setattr(segmenters, "load_file", forbidden("segmenters.load_file"))
    for architecture, entry in list(model_formats.FORMATS.items()):
        monkeypatch.setitem(model_formats.FORMATS, architecture, replace(entry, load=forbidden(f"load:{architecture.value}")))
    return calls


@pytest.mark.parametrize("fault", ["corrupt", "missing"])
def test_checksums_are_verified_before_any_model_file_is_loaded(model_pack, tmp_path, loaders_forbidden, fault):
    pack = _copy_pack(model_pack, tmp_path)
    victim = _last_listed_file(pack)
    if fault == "corrupt":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    with pytest.raises(ModelFolderError) as info:
        load_models(pack)
    message = str(info.value)
    assert str(victim) in message
    assert ("sha256" in message) if fault == "corrupt" else ("missing" in message)
    assert loaders_forbidden == []  # nothing was unpickled, nothing was even built


def test_loaders_are_reached_once_verification_passes(model_pack, loaders_forbidden):
    """Control for the test above: with an intact pack the forbidden loaders *are* reached."""
    with pytest.raises(ModelFolderError, match="failed to load"):
        load_models(model_pack)
    assert loaders_forbidden == ["load:xrv-densenet121"]  # the first model in manifest order


def test_a_loaded_file_missing_from_the_manifest_is_refused(model_pack, tmp_path, loaders_forbidden):
    """A checkpoint the loader would unpickle but the manifest does not list cannot be verified."""
    pack = _copy_pack(model_pack, tmp_path)
    manifest = json.loads((pack / MANIFEST_NAME).read_text())
    del manifest["models"]["nnunet_2d_768"]["files"]["fold_0/checkpoint_final.pth"]
    (pack / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"nnunet_2d_768/fold_0/checkpoint_final\.pth: .*does not list it"):
        load_models(pack)
    assert loaders_forbidden == []


def test_every_unpickled_file_is_verified_and_weights_only_where_the_format_allows(model_pack, monkeypatch):
    import torch

    real_load = torch.load
    loads: list[tuple[str, object]] = []

    def spy(f, *args, **kwargs):
        loads.append((str(f), kwargs.get("weights_only", "default")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    models = load_models(model_pack)
    verified = {str(model_pack / card.name / name) for card in models.manifest.models for name in card.files}
    assert loads, "torch.load was never called: the spy is not on the loaders' path"
    for path, _ in loads:
        assert path in verified, f"{path} was unpickled but is not a verified manifest file"
    not_weights_only = sorted(Path(path).relative_to(model_pack).as_posix() for path, flag in loads if flag is not True)
    assert not_weights_only == [
        "nnunet_2d_336/fold_0/checkpoint_final.pth",
        "nnunet_2d_768/fold_0/checkpoint_final.pth",
        "nnunet_refine_256/fold_0/checkpoint_final.pth",
    ]
    # our own models are safetensors: never unpickled
    assert not any(path.endswith(".safetensors") for path, _ in loads)


@pytest.mark.e2e
def test_missing_model_file_stops_the_app_before_input_is_read(model_pack, tmp_path, dicom_dir):
    pack = _copy_pack(model_pack, tmp_path)
    victim = pack / "convnext_fpn_clip_336" / "model.safetensors"
    victim.unlink()
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted((dicom_dir / "rsna").glob("*.dcm"))[0], folder / "a.dcm")
    output = tmp_path / "out"
    run = run_app(io_args(folder, output, pack), output, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"{victim}: missing" in run.stderr
    assert "Found 1 files" not in run.stderr and "a.dcm" not in run.stderr  # no input was read
    assert not output.exists() or not any(output.iterdir())
