"""Write the MAP's Docker build context with holoscan-cli's own packager, stopping before ``docker buildx``.

``monai-deploy package`` (holoscan-cli 4.2.0) does three things in a temporary folder: it writes
``map/app.json`` and ``map/pkg.json``, copies the application, the models and its ``tools`` entry
script (``PythonAppBuilder.__init__``), renders its Dockerfile template with the pip requirements
(``_copy_supporting_files``, ``_write_dockerfile``), and then hands the folder to ``docker buildx``
(``_build_internal``). This module runs exactly those packager calls, with the arguments parsed by the
packager's own argument parser, into a folder you name, and never calls the last step. The folder is
what ``monai-deploy package`` would have sent to Docker, so it can be inspected and tested where no
Docker engine runs, and built later with ``docker buildx build`` (see :func:`docker_build_command`).

What is packaged (the ``application`` folder handed to the packager, staged by
:func:`stage_application`): the ``app`` and ``operators`` packages, ``requirements.txt`` (the
packager turns it into ``pip/requirements.txt``) and ``deploy/map_main.py`` as ``__main__.py``, so
that app.json's command ``python3 /opt/holoscan/app`` runs ``app.cli.main``. The models folder (a
manifest-described pack) is staged as the single model ``cxr_opacity`` (:data:`MODEL_NAME`): the
packager copies every sub-folder of ``--models`` to ``/opt/holoscan/models/<name>/``, so a pack passed
directly would have its six model folders copied twice (once inside the pack, once beside it).

``--source deploy/holoscan-artifacts.json`` is the packager's artifact manifest, kept here so that
nothing is downloaded: holoscan-cli 4.2.0's published manifest only knows Holoscan 4.2.0, while the
app runs on holoscan-cu13 4.6.0 (the packager reads the installed version). It maps 4.6.0 to the
same base image as 4.2.0 (``nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04``, Python 3.12).

    python -m deploy.build_context OUT_DIR [--models DIR] [--tag NAME] [--platform x86_64] [--no-graphs]
    python -m deploy.build_context --stage-only SRC_DIR [--models DIR]   # then `monai-deploy package` on a Docker host
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from operators.lib.errors import ModelFolderError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: The packager's artifact manifest (``--source``), so that nothing is downloaded.
ARTIFACTS = Path(__file__).resolve().with_name("holoscan-artifacts.json")
#: The MAP's entry point, staged as the application's ``__main__.py``.
MAP_MAIN = Path(__file__).resolve().with_name("map_main.py")
#: holoscan-cli release whose packager internals this module calls.
HOLOSCAN_CLI_VERSION = "4.2.0"
#: Name of the model pack in the MAP: ``/opt/holoscan/models/cxr_opacity/manifest.json``.
MODEL_NAME = "cxr_opacity"
#: First-party packages copied into the MAP (everything ``app`` imports at run time).
APP_PACKAGES = ("app", "operators")
DEFAULT_TAG = "cxr-lung-opacity"
#: Name of the file that records how the context was made (read by the tests and the README).
BUILD_RECORD = "build.json"


@dataclass(frozen=True)
class BuildContext:
    """A written build context: its folder, the image tag and the ``docker buildx`` build arguments."""

    folder: Path
    tag: str
    platform: str
    build_args: dict[str, str]


def make_world_readable(root: Path) -> None:
    """Give every file under ``root`` read permission for all, and every folder read and search.

    ``docker build`` COPY keeps file modes, and the MAP runs as a non-root user: a model file written
    0600 (safetensors' ``save_file`` does that) would be unreadable in the image.
    """
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() else 0o444))


def stage_application(staging: Path, repo: Path = REPO) -> Path:
    """Copy what the MAP runs into ``staging/app``: the app packages, requirements.txt, __main__.py."""
    target = staging / "app"
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in APP_PACKAGES:
        shutil.copytree(repo / package, target / package, ignore=ignore)
    shutil.copy(repo / "requirements.txt", target / "requirements.txt")
    shutil.copy(MAP_MAIN, target / "__main__.py")
    make_world_readable(target)
    return target


def stage_models(models: Path, staging: Path) -> Path:
    """Copy a models folder (with manifest.json) to ``staging/models/<MODEL_NAME>``; return ``staging/models``."""
    if not (models / "manifest.json").is_file():
        raise FileNotFoundError(f"{models}: no manifest.json; pass a models folder (python -m tools.random_model_pack DIR makes one).")
    root = staging / "models"
    shutil.copytree(models, root / MODEL_NAME, ignore=shutil.ignore_patterns("__pycache__"))
    make_world_readable(root)
    return root


def stage(folder: Path, models: Path, graphs: bool = True) -> tuple[Path, Path]:
    """Write what ``monai-deploy package`` takes: ``folder/app`` (application) and ``folder/models``.

    With ``graphs`` every network of the staged pack is exported to ONNX beside its native files and
    listed in the staged manifest (:mod:`app.export_graphs`): the export happens here, at build time,
    so the MAP starts without it. The source models folder is not changed.
    """
    application, staged_models = stage_application(folder), stage_models(Path(models), folder)
    if graphs:
        from app.export_graphs import export_graphs

        exported = export_graphs(staged_models / MODEL_NAME)
        logger.info("Exported ONNX graphs for %s", sorted(name for name, entry in exported.items() if entry))
        make_world_readable(staged_models)
    return application, staged_models


def package_command(application: Path, models: Path, *, tag: str = DEFAULT_TAG, platform: str = "x86_64",
                    uid: int = 1000, gid: int = 1000) -> list[str]:
    """The ``monai-deploy package`` command line for a staged application and models folder."""
    return ["monai-deploy", "package", str(application),
            "--config", str(REPO / "app.yaml"),
            "--models", str(models),
            "--platform", platform,
            "--tag", tag,
            "--source", str(ARTIFACTS),
            "--sdk", "monai-deploy",
            "--uid", str(uid), "--gid", str(gid)]


def build_context(out: Path, models: Path, *, tag: str = DEFAULT_TAG, platform: str = "x86_64",
                  uid: int = 1000, gid: int = 1000, graphs: bool = True) -> BuildContext:
    """Run holoscan-cli's packager into ``out`` up to, not including, ``docker buildx``.

    Parameters
    ----------
    out : pathlib.Path
        Folder for the build context; must not exist or be empty.
    models : pathlib.Path
        Models folder with manifest.json (copied to ``/opt/holoscan/models/cxr_opacity``).
    tag : str, optional
        Image name; the packager appends platform, configuration, architecture and version.
    platform : str, optional
        One of the packager's platforms (``x86_64``, ``sbsa``, ...).
    uid, gid : int, optional
        UID/GID of the non-root user the image runs as (the packager's defaults).
    graphs : bool, optional
        Export every network to ONNX in the packaged pack (:func:`stage`); the app runs them with
        ONNX Runtime and falls back to torch for any graph that is missing or altered.

    Returns
    -------
    BuildContext
        The folder, the image tag and the build arguments ``docker buildx`` would get.

    Raises
    ------
    RuntimeError
        When the installed holoscan-cli is not the release whose packager this module drives.
    FileExistsError, FileNotFoundError
        When ``out`` is not empty, or ``models`` has no manifest.json.
    """
    installed = version("holoscan-cli")
    if installed != HOLOSCAN_CLI_VERSION:
        raise RuntimeError(f"holoscan-cli {installed} is installed; this build uses the packager internals of "
                           f"{HOLOSCAN_CLI_VERSION} (pip install holoscan-cli=={HOLOSCAN_CLI_VERSION}).")
    from holoscan_cli.__main__ import parse_args
    from holoscan_cli.packager.arguments import PackagingArguments
    from holoscan_cli.packager.container_builder import PythonAppBuilder
    from holoscan_cli.packager.packager import _create_app_manifest, _create_package_manifest

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; the build context needs a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        application, staged_models = stage(staging, models, graphs=graphs)
        # Parsed by the packager's own parser, exactly as `monai-deploy package` parses it.
        args = parse_args(package_command(application, staged_models, tag=tag, platform=platform, uid=uid, gid=gid))
        # The packager's own steps, as in holoscan_cli.packager.packager._package_application:
        packaging = PackagingArguments(args, str(out))
        _create_app_manifest(packaging.application_manifest, str(out))
        _create_package_manifest(packaging.package_manifest, str(out))
        builder = PythonAppBuilder(packaging.build_parameters, str(out))
        (target,) = packaging.platforms
        builder._copy_supporting_files(target)
        builder._write_dockerfile(target)
        # ...where _build_internal would now call docker buildx with these build arguments.
        params = packaging.build_parameters
        context = BuildContext(out, target.tag, target.docker_arch,
                               {"UID": str(params.uid), "GID": str(params.gid), "UNAME": str(params.username),
                                "GPU_TYPE": target.platform_config.value})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = {"tag": context.tag, "platform": context.platform, "build_args": context.build_args,
              "holoscan_cli": installed, "docker_build": docker_build_command(context)}
    (out / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("Wrote the MAP build context %s for %s", out, context.tag)
    return context


def docker_build_command(context: BuildContext) -> str:
    """The ``docker buildx build`` line that builds the image from the context, as the packager would."""
    args = " ".join(f"--build-arg {key}={shlex.quote(value)}" for key, value in context.build_args.items())
    return (f"docker buildx build --platform {context.platform} {args} --tag {context.tag} "
            f"--load {shlex.quote(str(context.folder))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.build_context", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="new folder for the build context (or, with --stage-only, for app/ and models/)")
    parser.add_argument("--models", type=Path, default=REPO / "models", help="models folder with manifest.json (default: models/)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image name (default: {DEFAULT_TAG})")
    parser.add_argument("--platform", default="x86_64", help="packager platform (default: x86_64)")
    parser.add_argument("--uid", type=int, default=1000, help="UID of the user the image runs as (default: 1000)")
    parser.add_argument("--gid", type=int, default=1000, help="GID of that user (default: 1000)")
    parser.add_argument("--no-graphs", action="store_true", help="do not export the networks to ONNX (every model runs on torch)")
    parser.add_argument("--stage-only", action="store_true",
                        help="only write OUT/app and OUT/models and print the `monai-deploy package` line (for a Docker host)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.stage_only:
        if args.out.exists() and any(args.out.iterdir()):
            logger.error("%s is not empty; staging needs a new folder.", args.out)
            return 2
        try:
            application, models = stage(args.out, args.models, graphs=not args.no_graphs)
        except (FileNotFoundError, ModelFolderError) as exc:
            logger.error("%s", exc)
            return 2
        command = package_command(application, models, tag=args.tag, platform=args.platform, uid=args.uid, gid=args.gid)
        logger.info("Staged %s and %s; on a host with Docker and buildx run:\n  %s", application, models, shlex.join(command))
        return 0
    try:
        context = build_context(args.out, args.models, tag=args.tag, platform=args.platform, uid=args.uid, gid=args.gid,
                                graphs=not args.no_graphs)
    except (RuntimeError, FileExistsError, FileNotFoundError, ModelFolderError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info("Build it on a Docker host with:\n  %s", docker_build_command(context))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
