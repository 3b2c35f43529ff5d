"""The app's side of the hardening issue: names taken from files, folders that nest, links out of the
input, a model pack that points outside itself, and results that a re-sent study replaces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from app.model_store import load_models
from operators.lib.errors import ModelFolderError
from operators.lib.run_report import ExitCode
from tests.support import cases
from tests.support.app_runner import check_result_folder, hidden_entries, io_args, run_app

pytestmark = pytest.mark.e2e
HOSTILE_UIDS = {".": "dot", ".x.partial": "hidden", "summary.json": "summary", "..": "dotdot", "1." + "2" * 299: "long"}


def _write(ds: pydicom.Dataset, sop_uid: str, path: Path) -> None:
    ds = cases.new_identity(ds, path.stem)
    from pydicom import config

    before = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # plant the invalid UIDs on purpose
    try:
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(path)
    finally:
        config.settings.writing_validation_mode = before


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, dicom_dir, fast_pack):
    folder = tmp_path_factory.mktemp("hostile_in")
    for index, (sop_uid, name) in enumerate(HOSTILE_UIDS.items()):
        _write(cases.rsna_uncompressed(dicom_dir, index % 5, size=256), sop_uid, folder / f"{name}.dcm")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(sorted((dicom_dir / "rsna").glob("*.dcm"))[0], elsewhere / "outside.dcm")
    (folder / "link_out.dcm").symlink_to(elsewhere / "outside.dcm")
    output = tmp_path_factory.mktemp("hostile_out") / "out"
    return folder, output, run_app(io_args(folder, output, fast_pack), output, timeout=600)


def test_names_from_files_never_touch_the_output_folder_itself(hostile_run):
    folder, output, run = hostile_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert output.is_dir() and (output / "summary.json").is_file()
    processed = run.records("processed")
    assert {Path(r["path"]).stem for r in processed} == set(HOSTILE_UIDS.values())
    for record in processed:
        name = record["case_id"]
        assert name.startswith("case-") and len(name) <= 64, name  # generated: none of the UIDs is valid
        check_result_folder(output / name)
        result = json.loads((output / name / "result.json").read_text())
        assert any("is not a valid UID" in w for w in result["warnings"]), result["warnings"]
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == sorted(r["case_id"] for r in processed)
    assert hidden_entries(output) == []


def test_a_link_out_of_the_input_folder_is_skipped_with_the_reason(hostile_run):
    _, _, run = hostile_run
    (skipped,) = run.records("skipped")
    assert skipped["path"].endswith("link_out.dcm") and "outside the input folder; not followed" in skipped["reason"]


@pytest.mark.parametrize("layout", ["output_in_input", "input_in_output", "same"])
def test_nested_input_and_output_folders_are_refused_at_start(tmp_path, fast_pack, layout):
    base = tmp_path / "base"
    base.mkdir()
    input_folder, output = {"output_in_input": (base, base / "out"), "input_in_output": (base / "in", base),
                            "same": (base, base)}[layout]
    input_folder.mkdir(exist_ok=True)
    run = run_app(io_args(input_folder, output, fast_pack), output, timeout=300)
    assert run.returncode == ExitCode.CONFIGURATION, run.stderr[-2000:]
    assert "inside the" in run.stderr or "inside the" in run.stdout


@pytest.mark.parametrize("bad", ["/etc/passwd", "../nnunet_2d_336/fold_0/checkpoint_final.pth", "fold_0/../../x.pth"])
def test_manifest_paths_must_stay_inside_the_model_folder(tmp_path, fast_pack, bad):
    pack = Path(shutil.copytree(fast_pack, tmp_path / "pack"))
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["models"]["nnunet_refine_256"]["files"][bad] = "0" * 64
    (pack / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="must stay inside the model's folder"):
        load_models(pack)


def test_a_model_file_that_links_out_of_its_folder_is_refused(tmp_path, fast_pack):
    pack = Path(shutil.copytree(fast_pack, tmp_path / "pack"))
    target = pack / "nnunet_refine_256" / "plans.json"
    outside = tmp_path / "plans.json"
    shutil.move(target, outside)
    target.symlink_to(outside)
    with pytest.raises(ModelFolderError, match="resolves outside the model folder"):
        load_models(pack)


def test_a_study_processed_twice_gets_the_same_result_uids(tmp_path, dicom_dir, fast_pack):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted((dicom_dir / "rsna").glob("*.dcm"))[1], folder / "a.dcm")
    uids = []
    for attempt in ("first", "again"):
        output = tmp_path / attempt
        run = run_app(io_args(folder, output, fast_pack), output, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        (case,) = [p for p in output.iterdir() if p.is_dir()]
        uids.append({p.name: (str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
                     for p in sorted(case.glob("*.dcm")) for ds in [pydicom.dcmread(p, stop_before_pixels=True)]})
    assert uids[0] == uids[1] and len(uids[0]) == 5
    assert len({sop for _, sop in uids[0].values()}) == 5
