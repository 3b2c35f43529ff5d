"""The MAP as a real container: built offline by ``deploy.build_image``, run by ``deploy.run_image``.

The image is built once per run (``map_image`` in conftest.py; the engine keeps its layer cache between
runs) from the packager's own build context with the repository's model pack. Then it is checked
against the MAP specification from the inside, run as a platform runs it (``--user 1000:1000``,
``--network none``, models read-only at ``HOLOSCAN_MODEL_PATH``, input and output at
``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH``, the image's entrypoint and ``app.json`` command)
on the bundled example, the RSNA CRs and the NEMA RG1 JPEG 2000 CR, and its outputs are compared
with ``python -m app`` on the same inputs and the same (packaged) models. The Orthanc round trip runs
once with the listener's ``--app-command`` running the image (test_orthanc_round_trip.py).

Where no container engine is installed these tests skip, saying so; one that is installed but cannot
run fails.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from deploy.build_context import MODEL_NAME
from deploy.build_image import LOCAL_BASE, OFFLINE_DOCKERFILE, WHEEL_MOUNT, offline_dockerfile, packager_base, ulimit_args
from deploy.run_image import USER, prepare_output, readable_by, run, run_command, staged_input
from operators.lib.run_report import ExitCode
from tests.support.app_runner import io_args, run_app

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
#: What a DICOM result file must equal between the image and the checkout: its pixels (or SR content).
RESULT_FILES = ("seg_probability.dcm", "seg_binary.dcm", "seg_bands.dcm", "sc_heatmap.dcm")

#: Run inside the image: what the MAP specification asks of it, as JSON.
INSPECT = r"""
import json, os, pwd, sys
from pathlib import Path
env = dict(os.environ)
def writable(path):
    return os.access(path, os.W_OK)
app = Path(env["HOLOSCAN_APPLICATION"])
models = Path(env["HOLOSCAN_MODEL_PATH"])
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "user": pwd.getpwuid(os.getuid()).pw_name,
    "env": {k: v for k, v in env.items() if k.startswith("HOLOSCAN_")},
    "app_json": json.loads(Path(env["HOLOSCAN_APP_MANIFEST_PATH"]).read_text()),
    "pkg_json": json.loads(Path(env["HOLOSCAN_PKG_MANIFEST_PATH"]).read_text()),
    "app_yaml": Path(env["HOLOSCAN_CONFIG_PATH"]).read_text(),
    "writable": {str(p): writable(p) for p in [app, app / "app", models, *sorted(models.iterdir())]},
    "any_app_file_writable": any(writable(p) for p in app.rglob("*")),
    "models": sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()),
    "output_writable": writable(env["HOLOSCAN_OUTPUT_PATH"]),
    "cwd": os.getcwd(),
}))
"""


# --------------------------------------------------------------------------------------------------
# The Dockerfile rewrite: pure, no engine needed
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packager_dockerfile(tmp_path_factory, random_pack) -> str:
    from deploy.build_context import build_context

    context = build_context(tmp_path_factory.mktemp("ctx") / "context", random_pack, graphs=False)
    return (context.folder / "Dockerfile").read_text()


def test_offline_dockerfile_keeps_the_packager_base_when_present(packager_dockerfile):
    text, changes = offline_dockerfile(packager_dockerfile, base=None)
    assert packager_base(text) == packager_base(packager_dockerfile) == "nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04"
    assert "apt-get update" in text and "python3.12" in text  # the base's own steps stay
    pip_lines = [line for line in text.splitlines() if "pip install" in line]
    assert pip_lines and all(f"--no-index --find-links {WHEEL_MOUNT}" in line and "--mount=type=bind" in line for line in pip_lines)
    assert "pip install --upgrade pip" not in text
    assert not any("base image" in change for change in changes)


def test_offline_dockerfile_substitutes_the_base_and_drops_network_steps(packager_dockerfile):
    text, changes = offline_dockerfile(packager_dockerfile, base=LOCAL_BASE, python="3.11")
    assert packager_base(text) == LOCAL_BASE and f'LABEL base="{LOCAL_BASE}"' in text
    for network in ("apt-get", "apt update", "curl", "cuda-keyring", "python3.12"):
        assert network not in text, network
    assert "RUN rm -rf /usr/lib/python3.11/EXTERNALLY-MANAGED" in text
    ld_path = next(line for line in text.splitlines() if line.startswith("ENV LD_LIBRARY_PATH="))
    assert ld_path.endswith("/home/${UNAME}/.local/lib/python3.11/site-packages/nvidia/cu13/lib")
    # everything else of the template is kept, in order
    kept = [line for line in packager_dockerfile.splitlines() if line.startswith(("COPY", "ENTRYPOINT", "USER", "WORKDIR", "ENV HOLOSCAN"))]
    assert [line for line in text.splitlines() if line.startswith(("COPY", "ENTRYPOINT", "USER", "WORKDIR", "ENV HOLOSCAN"))] == kept
    assert any(LOCAL_BASE in change for change in changes)


def test_offline_dockerfile_refuses_a_template_it_does_not_know():
    with pytest.raises(ValueError, match="AS base"):
        offline_dockerfile("FROM debian\nRUN pip install x\n")
    with pytest.raises(ValueError, match="pip install"):
        offline_dockerfile("FROM img AS base\nRUN apt-get update\n")
    with pytest.raises(ValueError, match="apt steps"):
        offline_dockerfile("FROM img AS base\nRUN pip install x\n", base=LOCAL_BASE)


def test_a_private_input_is_staged_for_the_images_user_and_left_unchanged(tmp_path):
    """The listener's spool is private (0700/0600, root): the container's user gets a copy, not the spool."""
    private = tmp_path / "job" / "input"
    private.mkdir(parents=True)
    (private / "a.dcm").write_bytes(b"dicom")
    (private / "a.dcm").chmod(0o600)
    private.chmod(0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "b.dcm").write_bytes(b"x")
    (shared / "b.dcm").chmod(0o644)
    shared.chmod(0o755)
    assert readable_by(shared) and not readable_by(private)
    with staged_input(shared) as path:
        assert path == shared
    if os.geteuid() != 0:
        return  # only root stages a copy (it is root that can read the private spool); checked above: no copy
    with staged_input(private) as path:
        assert path != private and (path / "a.dcm").read_bytes() == b"dicom"
        assert readable_by(path) and (path.stat().st_uid, (path / "a.dcm").stat().st_uid) == (USER[0], USER[0])
        staged = path
    assert not staged.exists()
    assert (private.stat().st_uid, oct(private.stat().st_mode & 0o777)) == (os.geteuid(), "0o700")


# --------------------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------------------

def test_build_reports_size_and_what_it_substituted(map_image, container_engine):
    packager = packager_base((map_image["context"] / "Dockerfile").read_text())
    assert map_image["packager_base"] == packager
    assert map_image["base_substituted"] == (not container_engine.image_exists(packager))
    assert map_image["size_bytes"] > 1e9  # torch and its CUDA libraries: see the README
    record = json.loads((map_image["context"] / "image.json").read_text())
    assert record["image"] == map_image["image"] and record["changes"]
    offline = (map_image["context"] / OFFLINE_DOCKERFILE).read_text()
    assert "--no-index" in offline and container_engine.image_exists(map_image["image"])


@pytest.fixture(scope="module")
def inside(map_image, container_engine) -> dict:
    """What the image holds, read from inside as its default user (no --user), without network."""
    proc = container_engine.run("run", "--rm", "--network", "none", *ulimit_args(),
                                "--entrypoint", "python3", map_image["image"], "-c", INSPECT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_image_meets_the_map_specification(inside, map_image):
    context = map_image["context"]
    assert inside["app_json"] == json.loads((context / "map" / "app.json").read_text())
    assert inside["pkg_json"] == json.loads((context / "map" / "pkg.json").read_text())
    app_yaml = yaml.safe_load((REPO / "app.yaml").read_text())
    assert yaml.safe_load(inside["app_yaml"]) == app_yaml
    assert inside["app_json"]["version"] == inside["pkg_json"]["version"] == str(app_yaml["application"]["version"])
    for key, value in app_yaml["resources"].items():
        assert str(inside["pkg_json"]["resources"][key]) == str(value), key
    assert json.loads(inside["app_json"]["command"]) == ["python3", "/opt/holoscan/app"]
    assert inside["app_json"]["input"]["formats"] == app_yaml["application"]["input-formats"]
    # models: one pack under /opt/holoscan/models/<name>, with its manifest, as pkg.json lists it
    assert inside["pkg_json"]["models"] == {MODEL_NAME: f"{inside['env']['HOLOSCAN_MODEL_PATH']}/{MODEL_NAME}"}
    assert f"{MODEL_NAME}/manifest.json" in inside["models"]
    staged = sorted(str(p.relative_to(context / "models")) for p in (context / "models").rglob("*") if p.is_file())
    assert inside["models"] == staged
    # a non-root user that cannot change the app or the models, and can write its output
    assert (inside["uid"], inside["gid"]) == USER and inside["user"] == "holoscan"
    assert not any(inside["writable"].values()), inside["writable"]
    assert not inside["any_app_file_writable"] and inside["output_writable"]
    assert inside["cwd"] == inside["app_json"]["workingDirectory"]


@pytest.fixture(scope="module")
def study_inputs(dicom_dir, tmp_path_factory) -> Path:
    """The bundled example, the five RSNA CRs and the NEMA RG1 CR (MONOCHROME1; uncompressed, lossless
    and lossy JPEG 2000), in one folder."""
    folder = tmp_path_factory.mktemp("image_inputs") / "in"
    folder.mkdir()
    sources = [REPO / "examples" / "rsna_cr_00436515.dcm", *sorted(dicom_dir.glob("rsna/*.dcm")),
               *sorted(dicom_dir.glob("misc/nema_wg04_RG1_*.dcm"))]
    for index, path in enumerate(sources):
        shutil.copy(path, folder / f"{index:02d}_{path.name}")
        (folder / f"{index:02d}_{path.name}").chmod(0o644)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def both_runs(map_image, container_engine, study_inputs, tmp_path_factory) -> dict:
    """The image (as a platform runs it, models mounted read-only) and the checkout, on the same inputs and models."""
    models = map_image["context"] / "models"
    image_out = tmp_path_factory.mktemp("image_run") / "out"
    prepare_output(image_out)
    command = run_command(container_engine, map_image["image"], study_inputs, image_out, models=models)
    log = io.StringIO()
    status = run(command, log)
    checkout_out = tmp_path_factory.mktemp("checkout_run") / "out"
    checkout = run_app(io_args(study_inputs, checkout_out, models / MODEL_NAME), checkout_out, timeout=900)
    return {"image": image_out, "checkout": checkout_out, "input": study_inputs, "status": status, "log": log.getvalue(), "command": command,
            "checkout_code": checkout.returncode}


def _comparable(result: dict, input_root: str) -> dict:
    """result.json without what differs by design: timings, the time of computing and absolute paths (``input_root`` in messages)."""
    result = dict(result)
    result.pop("timings_s")
    result.pop("computed_at")
    result["warnings"] = [w.replace(input_root, "<input>") for w in result["warnings"]]
    result["source"] = {k: v for k, v in result["source"].items() if k != "path"}
    result["outputs"] = [Path(p).name for p in result["outputs"]]
    return result


def test_image_runs_as_a_platform_runs_it(both_runs):
    command = both_runs["command"]
    assert both_runs["status"] == 0 == both_runs["checkout_code"], both_runs["log"][-4000:]
    assert "Launching application python3 /opt/holoscan/app" in both_runs["log"]  # the image's entrypoint ran
    assert "--user" in command and command[command.index("--user") + 1] == "1000:1000"
    assert command[command.index("--network") + 1] == "none"
    assert any(arg.endswith(":/opt/holoscan/models:ro") for arg in command)
    assert f"{both_runs['input']}:/var/holoscan/input:ro" in command and any(arg.endswith(":/var/holoscan/output:rw") for arg in command)
    summary = json.loads((both_runs["image"] / "summary.json").read_text())
    assert summary["counts"]["processed"] == 9, summary["counts"]
    assert set(summary["model_runtimes"].values()) >= {"onnxruntime"}


def test_image_outputs_equal_the_checkout(both_runs):
    image, checkout = both_runs["image"], both_runs["checkout"]
    cases = sorted(p.name for p in checkout.iterdir() if p.is_dir())
    assert cases and sorted(p.name for p in image.iterdir() if p.is_dir()) == cases
    for case in cases:
        ours, theirs = json.loads((image / case / "result.json").read_text()), json.loads((checkout / case / "result.json").read_text())
        assert _comparable(ours, "/var/holoscan/input") == _comparable(theirs, str(both_runs["input"])), case
        for name in RESULT_FILES:
            a, b = pydicom.dcmread(image / case / name), pydicom.dcmread(checkout / case / name)
            assert np.array_equal(a.pixel_array, b.pixel_array), f"{case}/{name}"
            assert a.SOPInstanceUID == b.SOPInstanceUID  # derived from the case, not from the run
        sr_a, sr_b = pydicom.dcmread(image / case / "sr_opacity.dcm"), pydicom.dcmread(checkout / case / "sr_opacity.dcm")
        assert sr_a.ContentSequence == sr_b.ContentSequence, case


@pytest.mark.parametrize("scenario, expected", [("non_chest_only", ExitCode.NOTHING_PROCESSED),
                                                ("bad_preset", ExitCode.CONFIGURATION)])
def test_the_apps_exit_code_comes_back_through_the_entrypoint(map_image, container_engine, dicom_dir, tmp_path, scenario, expected):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in (dicom_dir / "misc" / "non_chest").glob("*.dcm"):
        shutil.copy(path, inputs / path.name)
        (inputs / path.name).chmod(0o644)
    inputs.chmod(0o755)
    out = tmp_path / "out"
    prepare_output(out)
    app_args = ("--preset", "no-such-preset") if scenario == "bad_preset" else ()
    log = io.StringIO()
    status = run(run_command(container_engine, map_image["image"], inputs, out, app_args=app_args), log)
    # holoscan-cli's entry script logs the app's status but exits 0; deploy.run_image passes the status on
    assert status == expected, log.getvalue()[-3000:]
    assert f"Application exited with {int(expected)}." in log.getvalue()


def test_run_image_cli_names_a_missing_image(container_engine, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deploy.run_image", str(REPO / "examples"), str(tmp_path / "out"),
                           "--image", "localhost/no-such-image:0"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "no-such-image" in proc.stderr


def test_build_image_cli_names_a_missing_engine(tmp_path):
    """Where neither podman nor docker is on PATH the command says so and exits 2, before writing anything."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, "-m", "deploy.build_image", "--context", str(tmp_path / "ctx")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2 and "no container engine" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "ctx").exists()
