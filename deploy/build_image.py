"""Build the MAP image offline, from the packager's own build context, with podman (or docker).

    python -m deploy.build_image [--models DIR] [--context DIR] [--tag NAME] [--engine podman|docker]
                                 [--wheelhouse DIR] [--base IMAGE]

Steps, each reported in ``image.json`` beside the context:

1. :func:`deploy.build_context.build_context` writes what ``monai-deploy package`` would hand to
   ``docker buildx`` (holoscan-cli 4.2.0's Dockerfile, manifests, entry script, app and models with
   their ONNX graphs).
2. A wheelhouse: ``pip wheel -r pip/requirements.txt`` on this host (cached in
   :data:`DEFAULT_WHEELHOUSE`), linked into the context as ``wheelhouse/``.
3. ``Dockerfile.offline``, the packager's Dockerfile with three kinds of change
   (:func:`offline_dockerfile`): pip installs from the wheelhouse (``--no-index``, a bind mount, so
   the wheels are not a layer of the image) and ``pip install --upgrade pip`` is dropped; and, only when
   the packager's base image (``nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04``) is not in the
   engine's store, a local base replaces it (:data:`LOCAL_BASE`, a Debian bookworm root file system
   from ``debootstrap``, made by :func:`build_local_base` when missing) and the steps that need
   Ubuntu's and NVIDIA's package servers are dropped (the local base already has Python, pip and jq;
   the CUDA runtime comes from the ``nvidia-cuda-runtime`` wheel).
4. ``ENGINE build`` with the layer cache on, then the image's size.

With podman, every command gets :data:`PODMAN_OPTIONS` (runc and cgroupfs: the default crun cannot
set rlimits or use hybrid cgroups on these machines). The unmodified ``Dockerfile`` stays in the
context: a host that reaches NVIDIA's registry and the package index builds it with the
``docker buildx build`` line in ``build.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.build_context import DEFAULT_TAG, REPO, build_context

logger = logging.getLogger(__name__)

#: Options podman needs on these machines: runc instead of crun, cgroupfs instead of systemd.
PODMAN_OPTIONS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
#: rlimits for ``build`` and ``run`` (runc cannot raise them past the host's; holoscan wants a 32 MiB stack).
ULIMITS = ("nofile=1024:1024", "nproc=4096:4096", "stack=33554432:33554432")
#: The local stand-in for the packager's base image: Debian bookworm (Python 3.11), made by debootstrap.
LOCAL_BASE = "localhost/cxr-opacity-base:bookworm-py311"
LOCAL_BASE_SUITE = "bookworm"
LOCAL_BASE_PYTHON = "3.11"
#: Debian packages of the local base: what the packager's apt steps would have installed (Python, pip, jq).
LOCAL_BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "jq")
DEFAULT_WHEELHOUSE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxr-opacity" / "wheelhouse"
#: Names inside the context (``wheels/`` would be dropped by the packager's .dockerignore).
OFFLINE_DOCKERFILE = "Dockerfile.offline"
WHEELHOUSE_DIR = "wheelhouse"
IMAGE_RECORD = "image.json"
#: Where the wheelhouse is mounted during the pip steps.
WHEEL_MOUNT = "/tmp/wheelhouse"


def ulimit_args() -> list[str]:
    """:data:`ULIMITS` as ``--ulimit=…`` arguments of ``build`` and ``run``."""
    return [f"--ulimit={limit}" for limit in ULIMITS]


@dataclass(frozen=True)
class Engine:
    """A container engine CLI: its name and the arguments every command starts with."""

    name: str
    prefix: tuple[str, ...]

    def command(self, *args: str) -> list[str]:
        """The full command line for ``ENGINE args...``."""
        return [*self.prefix, *args]

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run ``ENGINE args...`` (text output captured unless ``stdout`` is given)."""
        kwargs.setdefault("text", True)
        if "stdout" not in kwargs and "capture_output" not in kwargs:
            kwargs["capture_output"] = True
        return subprocess.run(self.command(*args), **kwargs)

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, "--format", "{{.Id}}").returncode == 0


def find_engine(name: str | None = None) -> Engine | None:
    """podman (with :data:`PODMAN_OPTIONS` where runc is installed) or docker; None when neither is on PATH."""
    for candidate in ([name] if name else ["podman", "docker"]):
        path = shutil.which(candidate)
        if path is None:
            continue
        if candidate == "podman" and shutil.which("runc"):
            return Engine("podman", (path, *PODMAN_OPTIONS))
        return Engine(candidate, (path,))
    return None


def engine_unavailable_reason(engine: Engine | None) -> str | None:
    """None when ``engine`` is installed and answers ``info``; else why not (for a skip or an error).

    A working ``info`` does not prove that builds and runs work: the build and the tests say that."""
    if engine is None:
        return "no container engine (podman or docker) on PATH"
    proc = engine.run("info", "--format", "{{.Host.OCIRuntime.Name}}" if engine.name == "podman" else "{{.ServerVersion}}")
    if proc.returncode != 0:
        return f"{engine.name} info failed: {(proc.stderr or proc.stdout).strip()[:300]}"
    return None


# ---------------------------------------------------------------------------------------------------
# The Dockerfile
# ---------------------------------------------------------------------------------------------------

@dataclass
class Instruction:
    """One Dockerfile instruction: its source text (continuation lines included) and its joined form."""

    text: str
    joined: str = field(init=False)

    def __post_init__(self) -> None:
        self.joined = " ".join(part.strip().rstrip("\\").strip() for part in self.text.splitlines()).strip()

    @property
    def keyword(self) -> str:
        return self.joined.split(" ", 1)[0].upper() if self.joined and not self.joined.startswith("#") else ""


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, keeping comments and blank lines as their own entries."""
    out: list[Instruction] = []
    lines = text.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        start = index
        while lines[index].rstrip("\n").rstrip().endswith("\\") and index + 1 < len(lines):
            index += 1
        out.append(Instruction("".join(lines[start:index + 1])))
        index += 1
    return out


def packager_base(text: str) -> str:
    """The image the packager's Dockerfile builds ``FROM ... AS base``."""
    for instruction in parse_dockerfile(text):
        match = re.fullmatch(r"FROM\s+(\S+)\s+AS\s+base", instruction.joined, flags=re.IGNORECASE)
        if match:
            return match.group(1)
    raise ValueError("the Dockerfile has no 'FROM <image> AS base' line: not holoscan-cli's template?")


def _offline_pip(joined: str) -> str:
    """``RUN pip install ARGS`` → the same from the mounted wheelhouse only."""
    args = joined.split("pip install", 1)[1].strip()
    return (f"RUN --mount=type=bind,source={WHEELHOUSE_DIR},target={WHEEL_MOUNT} "
            f"pip install --no-index --find-links {WHEEL_MOUNT} {args}\n")


def offline_dockerfile(text: str, *, base: str | None = None, python: str = LOCAL_BASE_PYTHON) -> tuple[str, list[str]]:
    """Rewrite holoscan-cli's Dockerfile to build without a network; return it and what was changed.

    Always: every ``RUN pip install`` installs from the wheelhouse bind-mounted at
    :data:`WHEEL_MOUNT` (``--no-index``) and ``pip install --upgrade pip`` is dropped. With ``base``
    (the packager's base image is missing): ``FROM`` and the ``base`` label name it, the apt steps (curl
    and jq, NVIDIA's apt key, Python 3.12 from Ubuntu) are dropped, the packager's ``python3.12`` paths
    become ``python{python}``, and ``LD_LIBRARY_PATH`` gains the ``nvidia-cuda-runtime`` wheel's
    library folder (the packager's base has the CUDA runtime in the system; holoscan needs it).

    Raises ValueError when a step this function must change is not found (a changed template).
    """
    original_base = packager_base(text)
    changes: list[str] = []
    out: list[str] = []
    seen = {"pip": 0, "apt": 0}
    for instruction in parse_dockerfile(text):
        joined, keyword = instruction.joined, instruction.keyword
        if keyword == "RUN" and re.fullmatch(r"RUN pip install --upgrade pip", joined):
            changes.append("dropped 'pip install --upgrade pip' (needs the package index; the base's pip is used)")
            continue
        if keyword == "RUN" and joined.startswith("RUN pip install"):
            out.append(_offline_pip(joined))
            changes.append(f"offline: {joined} (from the wheelhouse, --no-index)")
            seen["pip"] += 1
            continue
        if base is not None:
            if keyword == "FROM" and joined.split()[1] == original_base:
                out.append(instruction.text.replace(original_base, base))
                changes.append(f"base image {original_base} → {base} (not in the engine's store)")
                continue
            if keyword == "LABEL" and joined.startswith("LABEL base="):
                out.append(f'LABEL base="{base}"\n')
                continue
            if keyword == "RUN" and re.search(r"\bapt(-get)? update\b|cuda-keyring", joined):
                changes.append(f"dropped (needs Ubuntu's or NVIDIA's package servers; the local base has its result): {joined[:90]}...")
                seen["apt"] += 1
                continue
            if "python3.12" in joined:
                text_ = instruction.text.replace("python3.12", f"python{python}")
                if joined.startswith("ENV LD_LIBRARY_PATH="):
                    cudart = f"/home/${{UNAME}}/.local/lib/python{python}/site-packages/nvidia/cu13/lib"
                    text_ = text_.rstrip("\n") + f":{cudart}\n"
                    changes.append(f"LD_LIBRARY_PATH += {cudart} (the CUDA runtime from the nvidia-cuda-runtime wheel)")
                out.append(text_)
                changes.append(f"python3.12 → python{python}: {joined[:80]}")
                continue
        out.append(instruction.text)
    if seen["pip"] == 0:
        raise ValueError("the Dockerfile has no 'RUN pip install' step: not holoscan-cli's template?")
    if base is not None and seen["apt"] == 0:
        raise ValueError("the Dockerfile has no apt steps to drop: not holoscan-cli's template?")
    return "".join(out), changes


# ---------------------------------------------------------------------------------------------------
# Base image, wheelhouse, build
# ---------------------------------------------------------------------------------------------------

def build_local_base(engine: Engine, tag: str = LOCAL_BASE) -> None:
    """Make :data:`LOCAL_BASE`: ``debootstrap --variant=minbase`` bookworm with Python, pip and jq, imported.

    Needs root and debootstrap (``apt-get install debootstrap``); about a minute and 300 MB.
    """
    if shutil.which("debootstrap") is None:
        raise RuntimeError("the local base image needs debootstrap (apt-get install debootstrap), run as root")
    with tempfile.TemporaryDirectory(prefix="cxr-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(LOCAL_BASE_PACKAGES)}",
                               LOCAL_BASE_SUITE, str(rootfs)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = engine.run("import",
                              "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "--change", "ENV LANG=C.UTF-8",
                              "--change", f"LABEL org.opencontainers.image.description=Debian {LOCAL_BASE_SUITE} minbase with {' '.join(LOCAL_BASE_PACKAGES)}",
                              "-", tag, stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"importing the base image failed: {imported.stderr[-2000:]}")
    logger.info("Made the local base image %s", tag)


def build_wheelhouse(requirements: Path, wheelhouse: Path) -> None:
    """``pip wheel -r requirements -w wheelhouse`` on this host (its Python must match the image's)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                           "-r", str(requirements), "-w", str(wheelhouse)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed: {proc.stderr[-3000:]}")


def link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy, across file systems) every file of ``source`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


def image_size(engine: Engine, image: str) -> int:
    proc = engine.run("image", "inspect", image, "--format", "{{.Size}}")
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip().isdigit() else -1


def build_image(context: Path, models: Path, *, engine: Engine, tag: str = DEFAULT_TAG,
                wheelhouse: Path = DEFAULT_WHEELHOUSE, base: str | None = None, graphs: bool = True) -> dict:
    """Write the build context, make it offline, build it; return the record also written to ``image.json``.

    ``base``: an image to build FROM instead of the packager's; by default the packager's own when the
    engine has it, else :data:`LOCAL_BASE` (made when missing).
    """
    started = time.perf_counter()
    ctx = build_context(context, models, tag=tag, graphs=graphs)
    dockerfile = (ctx.folder / "Dockerfile").read_text()
    wanted = packager_base(dockerfile)
    if base is None and not engine.image_exists(wanted):
        base = LOCAL_BASE
    made_base = False
    if base is not None and not engine.image_exists(base):
        if base != LOCAL_BASE:
            raise RuntimeError(f"base image {base} is not in {engine.name}'s store")
        build_local_base(engine, base)
        made_base = True
    python = LOCAL_BASE_PYTHON if base == LOCAL_BASE else "3.12"
    host_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python != host_python:
        raise RuntimeError(f"the image's Python is {python}, this host's {host_python}: the wheelhouse is built "
                           f"with this host's pip, so run the build with Python {python}.")
    offline, changes = offline_dockerfile(dockerfile, base=base, python=python)
    (ctx.folder / OFFLINE_DOCKERFILE).write_text(offline)
    wheel_started = time.perf_counter()
    build_wheelhouse(ctx.folder / "pip" / "requirements.txt", wheelhouse)
    link_tree(wheelhouse, ctx.folder / WHEELHOUSE_DIR)
    wheel_seconds = time.perf_counter() - wheel_started
    build_args = [arg for key, value in ctx.build_args.items() for arg in ("--build-arg", f"{key}={value}")]
    build_cmd = engine.command("build", "--layers", "--network", "none", *ulimit_args(),
                               "-f", str(ctx.folder / OFFLINE_DOCKERFILE), *build_args, "--tag", ctx.tag, str(ctx.folder))
    if engine.name == "docker":
        build_cmd = [c for c in build_cmd if c != "--layers"]
    logger.info("Building %s: %s", ctx.tag, " ".join(build_cmd))
    build_started = time.perf_counter()
    log_path = ctx.folder / "build.log"
    with open(log_path, "wb") as log:  # streamed, so a long build can be followed with tail -f
        proc = subprocess.run(build_cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine.name} build failed ({proc.returncode}); log: {log_path}\n"
                           f"{log_path.read_text(errors='replace')[-3000:]}")
    record = {
        "image": ctx.tag,
        "engine": " ".join(engine.prefix),
        "base": base or wanted,
        "packager_base": wanted,
        "base_substituted": base is not None and base != wanted,
        "local_base_made": made_base,
        "changes": changes,
        "size_bytes": image_size(engine, ctx.tag),
        "wheelhouse": str(wheelhouse),
        "seconds": {"wheelhouse": round(wheel_seconds, 1), "build": round(time.perf_counter() - build_started, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "build_command": build_cmd,
        "build_args": ctx.build_args,
    }
    (ctx.folder / IMAGE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.build_image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models", help="models folder with manifest.json (default: models/)")
    parser.add_argument("--context", type=Path, default=None,
                        help="new folder for the build context (default: a fresh folder under build/)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image name (default: {DEFAULT_TAG})")
    parser.add_argument("--engine", choices=("podman", "docker"), default=None, help="container engine (default: podman, else docker)")
    parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE, help=f"wheel cache (default: {DEFAULT_WHEELHOUSE})")
    parser.add_argument("--base", default=None, help=f"base image (default: the packager's if present, else {LOCAL_BASE})")
    parser.add_argument("--no-graphs", action="store_true", help="do not export the networks to ONNX")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = find_engine(args.engine)
    reason = engine_unavailable_reason(engine)
    if reason:
        logger.error("%s", reason)
        return 2
    context = args.context or REPO / "build" / f"map-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        record = build_image(context, args.models, engine=engine, tag=args.tag, wheelhouse=args.wheelhouse,
                             base=args.base, graphs=not args.no_graphs)
    except (RuntimeError, ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    for change in record["changes"]:
        logger.info("  %s", change)
    logger.info("Built %s (%.2f GB) on %s in %.0f s; record: %s", record["image"], record["size_bytes"] / 1e9,
                record["base"], record["seconds"]["total"], context / IMAGE_RECORD)
    print(json.dumps({key: record[key] for key in ("image", "base", "base_substituted", "size_bytes", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
