"""Run the MAP image on one input folder as a platform runs it; the exit code is the app's.

    python -m deploy.run_image INPUT OUTPUT [--image NAME] [--models DIR] [--engine podman|docker] [-- APP_ARGS...]

What "as a platform runs it" means here (:func:`run_command`): the image's own entrypoint and
``app.json`` command, the user of the image's build (``--user 1000:1000``), no network, the input
mounted read-only and the output read-write at the image's ``HOLOSCAN_INPUT_PATH`` /
``HOLOSCAN_OUTPUT_PATH`` (read from the image), and, with ``--models``, a models folder mounted
read-only over ``HOLOSCAN_MODEL_PATH``. The listener runs it per study with
``--app-command "python -m deploy.run_image --image NAME {input} {output}"``.

The output folder must be writable by that user: run as root, this command creates it and gives it
to the user (a platform does the same for the folder it mounts). An input that user cannot read (the
listener's spool is private: files 0600, folders 0700) is copied, as root, to a temporary folder of
that user's for the run (:func:`staged_input`); the input itself is never changed.

Exit status: the app's. holoscan-cli's entry script logs "Application exited with N." and then exits
0 whatever N was (a platform that trusts the container's status sees success), so :func:`run` reads N
from that line when the container itself exited 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deploy.build_context import DEFAULT_TAG
from deploy.build_image import Engine, find_engine, ulimit_args

#: The image's user (holoscan-cli's defaults, as passed to the build).
USER = (1000, 1000)
#: The entry script's last line about the app (holoscan-cli 4.2.0 ``tools``, ``main``).
EXITED = re.compile(r"Application exited with (\d+)\.")
#: The image this repository builds (deploy.build_image's tag, as the packager completes it).
DEFAULT_IMAGE = f"{DEFAULT_TAG}-x64-workstation-dgpu-linux-amd64:0.1.0"


def image_env(engine: Engine, image: str) -> dict[str, str]:
    """The image's ENV (``HOLOSCAN_*`` paths among them)."""
    proc = engine.run("image", "inspect", image, "--format", "{{json .Config.Env}}")
    if proc.returncode != 0:
        raise RuntimeError(f"image {image} not found by {engine.name}: {proc.stderr.strip()[:300]} "
                           f"(build it with python -m deploy.build_image)")
    return dict(item.split("=", 1) for item in json.loads(proc.stdout) if "=" in item)


def run_command(engine: Engine, image: str, input_folder: Path, output_folder: Path, *, models: Path | None = None,
                user: tuple[int, int] = USER, app_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                name: str | None = None) -> list[str]:
    """The ``ENGINE run`` line for one run of the image (see the module docstring)."""
    env = env if env is not None else image_env(engine, image)
    mounts = ["-v", f"{Path(input_folder).resolve()}:{env['HOLOSCAN_INPUT_PATH']}:ro",
              "-v", f"{Path(output_folder).resolve()}:{env['HOLOSCAN_OUTPUT_PATH']}:rw"]
    if models is not None:
        mounts += ["-v", f"{Path(models).resolve()}:{env['HOLOSCAN_MODEL_PATH']}:ro"]
    return engine.command("run", "--rm", *(["--name", name] if name else []),
                          "--user", f"{user[0]}:{user[1]}", "--network", "none",
                          *ulimit_args(), *mounts, image, *app_args)


def prepare_output(output_folder: Path, user: tuple[int, int] = USER) -> None:
    """Create the output folder; as root, give it to the image's user so the app can write there."""
    output_folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(output_folder, *user)


def readable_by(path: Path, user: tuple[int, int] = USER) -> bool:
    """Whether ``user`` can read ``path`` and, for a folder, everything in it (mode bits, no ACLs)."""
    def ok(entry: Path) -> bool:
        info = entry.stat()
        need = (stat.S_IRUSR | stat.S_IXUSR, stat.S_IRGRP | stat.S_IXGRP, stat.S_IROTH | stat.S_IXOTH)
        if not entry.is_dir():
            need = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
        if info.st_uid == user[0]:
            return info.st_mode & need[0] == need[0]
        if info.st_gid == user[1]:
            return info.st_mode & need[1] == need[1]
        return info.st_mode & need[2] == need[2]

    path = Path(path)
    return ok(path) and (not path.is_dir() or all(ok(entry) for entry in path.rglob("*")))


@contextlib.contextmanager
def staged_input(input_path: Path, user: tuple[int, int] = USER) -> Iterator[Path]:
    """``input_path`` itself when ``user`` can read it (or we are not root); else a temporary copy owned by ``user``."""
    input_path = Path(input_path)
    if os.geteuid() != 0 or readable_by(input_path, user):
        yield input_path
        return
    scratch = Path(tempfile.mkdtemp(prefix="cxr-map-input-"))
    try:
        copy = scratch / "input"
        if input_path.is_dir():
            shutil.copytree(input_path, copy)
        else:
            copy.mkdir()
            shutil.copy2(input_path, copy / input_path.name)
        for entry in [scratch, copy, *copy.rglob("*")]:
            os.chown(entry, *user)
            entry.chmod(0o700 if entry.is_dir() else 0o600)
        yield copy
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(command: list[str], log=None) -> int:
    """Run the container, passing its output on to ``log`` (default: stderr); return the app's exit status.

    The container's own status when it is not 0 (the engine or the entry script failed), else the N of
    the entry script's "Application exited with N." (the app's status, which the script does not pass on).
    """
    log = log if log is not None else sys.stderr
    app_status = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            match = EXITED.search(line)
            if match:
                app_status = int(match.group(1))
    if proc.returncode != 0 or app_status is None:
        return proc.returncode
    return app_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.run_image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="folder (or file) of DICOM input")
    parser.add_argument("output", type=Path, help="folder for the results (created)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default: {DEFAULT_IMAGE})")
    parser.add_argument("--models", type=Path, default=None, help="models folder to mount read-only over the image's")
    parser.add_argument("--engine", choices=("podman", "docker"), default=None)
    parser.add_argument("app_args", nargs="*", help="arguments for the app after --")
    args = parser.parse_args(argv)
    engine = find_engine(args.engine)
    if engine is None:
        print("run_image: no container engine (podman or docker) on PATH", file=sys.stderr)
        return 2
    if not args.input.exists():
        print(f"run_image: {args.input}: no such input", file=sys.stderr)
        return 2
    with staged_input(args.input) as input_path:
        try:
            command = run_command(engine, args.image, input_path, args.output, models=args.models, app_args=tuple(args.app_args))
        except RuntimeError as exc:
            print(f"run_image: {exc}", file=sys.stderr)
            return 2
        prepare_output(args.output)
        return run(command)


if __name__ == "__main__":
    raise SystemExit(main())
