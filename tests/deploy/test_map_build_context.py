"""The MAP build context written by tools/package_map.sh (holoscan-cli 4.2.0's packager, without Docker).

First the context itself: the packager's files, the Dockerfile's entrypoint, layout, user and
labels, the models under /opt/holoscan/models with verified checksums, and pip requirements that
cover every import of the packaged code. Then the packaged app is run from the context as its
container would run it (tests/deploy/sandbox.py): image paths, HOLOSCAN_* from the Dockerfile,
models and app read-only, working directory /var/holoscan, the image's non-root user, no network.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import highdicom as hd
import pytest
import yaml

from app import __version__
from app.model_store import read_manifest, verify_files
from deploy.build_context import BUILD_RECORD, MODEL_NAME
from tests.support.sandbox import SandboxUnavailable, check_available, run_in_container

REPO = Path(__file__).resolve().parents[2]
#: Installed by the Dockerfile template itself, after pip/requirements.txt.
TEMPLATE_PACKAGES = {"monai-deploy-app-sdk"}
#: The image's user (holoscan-cli's defaults, passed on to the build context).
UID, GID = 1000, 1000


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def context(tmp_path_factory, deploy_models):
    """Build the context the way the README says: tools/package_map.sh OUT --models MODELS."""
    out = tmp_path_factory.mktemp("map") / "context"
    proc = subprocess.run(["bash", str(REPO / "tools" / "package_map.sh"), str(out), "--models", str(deploy_models)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path_factory.getbasetemp())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def dockerfile_lines(context: Path) -> list[str]:
    return [line.strip() for line in (context / "Dockerfile").read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_context_has_the_packager_files(context):
    for name in ("Dockerfile", ".dockerignore", "tools", "app.config", "map/app.json", "map/pkg.json",
                 "pip/requirements.txt", "app/__main__.py", f"models/{MODEL_NAME}/manifest.json", BUILD_RECORD):
        assert (context / name).is_file(), name
    assert (context / "app.config").read_text() == (REPO / "app.yaml").read_text()
    record = json.loads((context / BUILD_RECORD).read_text())
    assert record["holoscan_cli"] == "4.2.0"
    assert record["build_args"] == {"UID": str(UID), "GID": str(GID), "UNAME": "holoscan", "GPU_TYPE": "dgpu"}
    assert record["docker_build"].startswith("docker buildx build --platform linux/amd64 ")


def test_dockerfile_entrypoint_layout_and_user(context):
    lines = dockerfile_lines(context)
    assert lines[-1] == 'ENTRYPOINT ["/var/holoscan/tools"]'
    assert "COPY ./models  /opt/holoscan/models" in lines
    assert "COPY ./app /opt/holoscan/app" in lines
    assert "COPY ./app.config /var/holoscan/app.yaml" in lines
    assert "ENV HOLOSCAN_MODEL_PATH=/opt/holoscan/models" in lines
    assert "ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input" in lines and "ENV HOLOSCAN_OUTPUT_PATH=/var/holoscan/output" in lines
    assert "ENV HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml" in lines
    assert "RUN pip install --no-cache-dir --user -r /tmp/requirements.txt" in lines
    assert f"RUN pip install monai-deploy-app-sdk=={version('monai-deploy-app-sdk')}" in lines
    # The app is installed and run as the non-root user created from the build arguments.
    assert lines.index("USER $UNAME") < lines.index("COPY ./pip/requirements.txt /tmp/requirements.txt")
    assert lines[0].startswith("ARG GPU_TYPE=") and any(line.startswith("FROM nvcr.io/nvidia/cuda:13.") for line in lines)


def test_image_labels(context):
    labels = dict(re.fullmatch(r'LABEL ([\w.\-]+)="(.*)"', line).groups() for line in dockerfile_lines(context) if line.startswith("LABEL "))
    app_yaml = yaml.safe_load((REPO / "app.yaml").read_text())
    assert labels["org.opencontainers.image.title"] == app_yaml["application"]["title"]
    assert labels["org.opencontainers.image.version"] == str(app_yaml["application"]["version"]) == __version__
    assert labels["org.monai.deploy.app-sdk"] == version("monai-deploy-app-sdk")
    assert labels["org.nvidia.holoscan"] == version("holoscan-cu13")
    assert labels["tag"] == "cxr-lung-opacity"


def test_manifests_point_the_app_at_the_models(context):
    app_json = json.loads((context / "map" / "app.json").read_text())
    pkg_json = json.loads((context / "map" / "pkg.json").read_text())
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert app_json["sdk"] == "monai-deploy" and app_json["workingDirectory"] == "/var/holoscan"
    assert app_json["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert pkg_json["models"] == {MODEL_NAME: f"/opt/holoscan/models/{MODEL_NAME}"}
    assert pkg_json["resources"] == yaml.safe_load((REPO / "app.yaml").read_text())["resources"]
    # Every model file the manifest lists is in the context with its sha256 (the app's own check).
    verify_files(read_manifest(context / "models" / MODEL_NAME))


def test_the_build_exports_every_network_to_onnx_in_the_image_only(context, deploy_models):
    """Graphs are made at build time beside the native files and listed with their sha256; the
    source pack is untouched (its manifest has no graphs, its folders no model.onnx)."""
    from app.model_store import sha256_of

    packaged = read_manifest(context / "models" / MODEL_NAME)
    for card in packaged.models:
        assert card.graph is not None, card.name  # the test packs have no PSPNet, the one architecture not exported
        assert sha256_of(context / "models" / MODEL_NAME / card.name / card.graph.file) == card.graph.sha256
    assert all(card.graph is None for card in read_manifest(deploy_models).models)
    assert not list(Path(deploy_models).glob("*/model.onnx"))


def test_app_json_declares_file_formats(context):
    """holoscan-cli reads ``input-formats`` / ``output-formats`` from app.yaml (not ``inputFormats``)."""
    app_json = json.loads((context / "map" / "app.json").read_text())
    assert app_json["input"]["formats"] == ["file"]
    assert app_json["output"]["formats"] == ["file"]


def test_packaged_files_are_readable_by_the_image_user(context):
    """COPY keeps modes; the image runs as UID 1000, so every file must be world-readable."""
    needed = {True: stat.S_IROTH | stat.S_IXOTH, False: stat.S_IROTH}  # folder: read + search; file: read
    unreadable = [f"{path.relative_to(context)} {oct(path.stat().st_mode & 0o777)}"
                  for root in ("app", "models") for path in (context / root).rglob("*")
                  if path.stat().st_mode & needed[path.is_dir()] != needed[path.is_dir()]]
    assert not unreadable, unreadable


def test_requirements_cover_every_import(context):
    """pip/requirements.txt is requirements.txt, and names a distribution for every third-party import."""
    requirements = (context / "pip" / "requirements.txt").read_text()
    assert requirements.strip() == (REPO / "requirements.txt").read_text().strip()
    named = {canonical(re.split(r"[<>=!~\[; ]", line.split("#")[0].strip())[0])
             for line in requirements.splitlines() if line.split("#")[0].strip()} | TEMPLATE_PACKAGES
    app_root = context / "app"
    first_party = {p.name for p in app_root.iterdir() if p.is_dir() or p.suffix == ".py"}
    imports: dict[str, set[str]] = {}
    for path in app_root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                imports.setdefault(module.split(".")[0], set()).add(str(path.relative_to(app_root)))
    distributions = packages_distributions()
    missing = {}
    for module, users in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in first_party or module == "__main__":
            continue
        provided_by = {canonical(d) for d in distributions.get(module, [])}
        if not provided_by & named:
            missing[module] = (sorted(provided_by) or ["not installed"], sorted(users))
    assert not missing, f"imported but not in requirements.txt (module: distributions, importers): {missing}"


def test_first_party_imports_are_packaged(context):
    """Everything the packaged code imports from this repo is in the context (no tools/, no deploy/)."""
    app_root = context / "app"
    for path in app_root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in ("tools", "deploy", "tests"):
                pytest.fail(f"{path.relative_to(app_root)} imports {node.module}, which the MAP does not contain")


@pytest.fixture(scope="module")
def sandbox():
    try:
        check_available()
    except SandboxUnavailable as exc:
        pytest.skip(f"cannot run the context as a container here: {exc}")


PROBE = """
import getpass, json, os
try:
    open('/opt/holoscan/models/probe', 'w')
    models = 'writable'
except OSError as exc:
    models = exc.strerror
print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'user': getpass.getuser(), 'cwd': os.getcwd(),
                  'interfaces': sorted(os.listdir('/sys/class/net')),
                  'routes': open('/proc/net/route').read().splitlines()[1:],
                  'models': models, 'app_writable': os.access('/opt/holoscan/app', os.W_OK),
                  'env': {k: v for k, v in os.environ.items() if k.startswith('HOLOSCAN_')}}))
"""


def test_container_environment(sandbox, context, two_studies, tmp_path):
    """What the app will find: the image's user, WORKDIR, HOLOSCAN_* paths, read-only models, no network."""
    output = tmp_path / "output"
    output.mkdir()
    proc = run_in_container(context, two_studies, output, ["python3", "-c", PROBE], uid=UID, gid=GID, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert (seen["uid"], seen["gid"], seen["user"]) == (UID, GID, "holoscan")
    assert seen["cwd"] == "/var/holoscan"
    assert seen["interfaces"] == ["lo"] and seen["routes"] == []
    assert seen["models"] == "Read-only file system" and not seen["app_writable"]
    assert seen["env"]["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input"
    assert seen["env"]["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output"
    assert seen["env"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"


@pytest.fixture(scope="module")
def container_run(sandbox, context, two_studies, tmp_path_factory):
    """The image's entrypoint (/var/holoscan/tools → python3 /opt/holoscan/app) on two real studies."""
    output = tmp_path_factory.mktemp("container_output")
    output.chmod(0o755)  # as a folder made with the usual umask (pytest makes 0700 ones)
    proc = run_in_container(context, two_studies, output, uid=UID, gid=GID, timeout=600)
    return proc, output


@pytest.mark.e2e
def test_entrypoint_runs_the_app_on_real_dicoms(container_run):
    proc, output = container_run
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Application exited with 0." in log, log[-4000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["input"] == "/var/holoscan/input" and summary["output"] == "/var/holoscan/output"
    assert set(summary["model_runtimes"].values()) == {"onnxruntime"}  # the graphs the build exported
    processed = [r for r in summary["files"] if r["outcome"] == "processed"]
    assert len(processed) == 2, summary["files"]
    for record in processed:
        folder = output / record["case_id"]
        for name in ("seg_probability.dcm", "seg_binary.dcm"):
            seg = hd.seg.segread(folder / name)
            assert seg.Modality == "SEG"
            assert os.stat(folder / name).st_uid == UID  # written by the image's user


@pytest.mark.e2e
def test_outputs_are_readable_by_other_users(container_run):
    """A PACS exporter or the host user reading /var/holoscan/output is not the image's UID."""
    _, output = container_run
    unreadable = [f"{path.relative_to(output)} {oct(path.stat().st_mode & 0o777)}"
                  for path in [output, *output.rglob("*")] if not path.stat().st_mode & stat.S_IROTH]
    assert not unreadable, unreadable


@pytest.mark.e2e
def test_entrypoint_exit_code_is_always_zero(sandbox, context, two_studies, tmp_path):
    """holoscan-cli's tools script reports the app's exit code in its log but exits 0 (README: read summary.json)."""
    output = tmp_path / "output"
    output.mkdir()
    proc = run_in_container(context, two_studies, output, ["/var/holoscan/tools", "--preset", "no-such-preset"],
                            uid=UID, gid=GID, timeout=180)
    assert "Application exited with 2." in proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_workflow_definition_matches_the_image(context):
    """deploy/workflow.json (MONAI Deploy Express): routes CR/DX chest, runs this image, exports its output."""
    workflow = json.loads((REPO / "deploy" / "workflow.json").read_text())
    tasks = {task["id"]: task for task in workflow["tasks"]}
    router = workflow["tasks"][0]
    assert router["type"] == "router"
    (route,) = router["task_destinations"]
    conditions = " ".join(route["conditions"])
    assert "'0008','0060'" in conditions and "'CR'" in conditions and "'DX'" in conditions
    assert "'0018','0015'" in conditions and "'CHEST'" in conditions
    run = tasks[route["name"]]
    assert run["type"] == "docker"
    record = json.loads((context / BUILD_RECORD).read_text())
    assert run["args"]["container_image"] == record["tag"]
    app_json = json.loads((context / "map" / "app.json").read_text())
    assert run["args"]["command"] == " ".join(json.loads(app_json["command"]))
    env = {line.split("=", 1)[0][4:]: line.split("=", 1)[1] for line in dockerfile_lines(context) if line.startswith("ENV HOLOSCAN_")}
    for name in ("HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH", "HOLOSCAN_MODEL_PATH"):
        assert run["args"][f"env_{name}"].rstrip("/") == env[name].rstrip("/")
    assert [a["name"] for a in run["artifacts"]["input"]] == ["env_HOLOSCAN_INPUT_PATH"]
    assert [a["name"] for a in run["artifacts"]["output"]] == ["env_HOLOSCAN_OUTPUT_PATH"]
    (export_name,) = [d["name"] for d in run["task_destinations"]]
    export = tasks[export_name]
    assert export["type"] == "export"
    assert export["artifacts"]["input"][0]["value"] == f"{{{{ context.executions.{run['id']}.artifacts.env_HOLOSCAN_OUTPUT_PATH }}}}"
    assert {d["name"] for d in export["export_destinations"]} <= set(workflow["informatics_gateway"]["export_destinations"])
    assert len(workflow["name"]) <= 15


def test_monai_deploy_package_runs_up_to_docker(deploy_models, tmp_path):
    """The README's `monai-deploy package` line, on a --stage-only folder, gets as far as `docker buildx`.

    Run without network (its own network namespace, when root), so it also shows that the local
    --source manifest is all the packager needs: the only failure left is the missing Docker engine.
    """
    staged = tmp_path / "map-src"
    proc = subprocess.run(["bash", str(REPO / "tools" / "package_map.sh"), "--stage-only", str(staged), "--models", str(deploy_models)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    command = proc.stderr.strip().splitlines()[-1].split()
    assert command[:3] == ["monai-deploy", "package", str(staged / "app")]
    offline = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
    packaged = subprocess.run([*offline, *command], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = packaged.stdout + packaged.stderr
    assert "Generating app.json..." in log and "Generating pkg.json..." in log, log
    assert "Error packaging application" in log and "docker" in log.split("Error packaging application", 1)[1].lower(), log
    assert "Downloading" not in log
