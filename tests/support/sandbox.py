"""Run a command from a MAP build context the way its container would, without a container engine.

A new mount and network namespace (``unshare``, needs root) gets the image's file layout from the
build context: ``/opt/holoscan/app`` and ``/opt/holoscan/models`` read-only, ``/etc/holoscan/app.json``
and ``pkg.json``, ``/var/holoscan/{tools,app.yaml,input,output}``, the image's user (UID/GID from the
build arguments) in ``/etc/passwd`` and its home in ``/home``. ``/etc`` is an overlay and ``/opt``,
``/var``, ``/home`` are fresh tmpfs mounts, so the host is left untouched. The command then runs as
that user, in the image's WORKDIR, with a clean environment made of the Dockerfile's literal ``ENV``
lines, the stack limit of the documented ``docker run`` line (:data:`STACK_KIB`), and no network but
loopback (the namespace has no other interface and no route), as ``docker run --network none`` gives.

What the container image brings and this host provides instead: the Python interpreter and its
packages (the host's; a folder on its path that other users cannot enter, such as ``/root``, is
replaced by a traversable tmpfs holding only that path) and the CUDA runtime library folder
(``LD_LIBRARY_PATH`` is passed on).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

#: ``docker run --ulimit stack=67108864`` (64 MiB, what ``monai-deploy run`` sets), in KiB; lowered to
#: the caller's hard limit when that is smaller (tools/env.sh sets soft and hard to 32 MiB).
STACK_KIB = 65536
#: Folders the sandbox replaces with tmpfs mounts.
_REPLACED = ("/opt", "/var", "/home")

_SCRIPT = r"""
set -euo pipefail
ctx=$1 input=$2 output=$3 uid=$4 gid=$5 stack=$6 blocked=$7 child=$8 workdir=$9
shift 9
mount --make-rprivate /
ip link set lo up
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /opt
mkdir /opt/.etc-upper /opt/.etc-work
mount -t overlay overlay -o lowerdir=/etc,upperdir=/opt/.etc-upper,workdir=/opt/.etc-work /etc
if [ -n "$blocked" ]; then
  mkdir /opt/.keep && mount --bind "$blocked/$child" /opt/.keep
  mount -t tmpfs -o mode=755 tmpfs "$blocked"
  mkdir -p "$blocked/$child" && mount --move /opt/.keep "$blocked/$child"
fi
mkdir -p /opt/holoscan/app /opt/holoscan/models /etc/holoscan
for part in app models; do
  mount --bind "$ctx/$part" "/opt/holoscan/$part" && mount -o remount,bind,ro "/opt/holoscan/$part"
done
cp "$ctx/map/app.json" "$ctx/map/pkg.json" /etc/holoscan/
sed -i "/^[^:]*:[^:]*:$uid:/d" /etc/passwd && echo "holoscan:x:$uid:$gid::/home/holoscan:/bin/bash" >> /etc/passwd
sed -i "/^[^:]*:[^:]*:$gid:/d" /etc/group && echo "holoscan:x:$gid:" >> /etc/group
mount -t tmpfs -o mode=755 tmpfs /home && mkdir /home/holoscan && chown "$uid:$gid" /home/holoscan
mount -t tmpfs -o mode=755 tmpfs /var
mkdir -p "$workdir/input" "$workdir/output" && chown -R "$uid:$gid" "$workdir"
cp "$ctx/tools" "$workdir/tools" && chmod 755 "$workdir/tools" && cp "$ctx/app.config" "$workdir/app.yaml"
mount --bind "$input" "$workdir/input" && mount -o remount,bind,ro "$workdir/input"
mount --bind "$output" "$workdir/output"
cd "$workdir"
ulimit -Ss "$stack"
exec setpriv --reuid "$uid" --regid "$gid" --clear-groups "$@"
"""


class SandboxUnavailable(RuntimeError):
    """This host cannot build the sandbox (not root, no unshare/setpriv, interpreter in a replaced folder)."""


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """The Dockerfile's ``ENV KEY=VALUE`` lines whose value is literal (no ``$`` expansion)."""
    env = {}
    for line in dockerfile.read_text().splitlines():
        match = re.fullmatch(r"ENV (\w+)=(\S*)", line.strip())
        if match and "$" not in match.group(2):
            env[match.group(1)] = match.group(2)
    return env


def dockerfile_workdir(dockerfile: Path) -> str:
    """The last WORKDIR of the Dockerfile (where the entrypoint starts)."""
    return [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("WORKDIR ")][-1]


def _blocked_ancestor(path: Path) -> tuple[str, str]:
    """The top-most folder on ``path`` that other users cannot enter, and the next component below it."""
    parts = path.parts
    for depth in range(1, len(parts)):
        folder = Path(*parts[:depth])
        if not os.stat(folder).st_mode & 0o001:
            return str(folder), parts[depth]
    return "", ""


def check_available() -> None:
    """Raise SandboxUnavailable with the reason when this host cannot run the sandbox."""
    if os.geteuid() != 0:
        raise SandboxUnavailable("the container sandbox needs root (unshare, mounts, setpriv)")
    for tool in ("unshare", "setpriv", "ip", "jq"):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"{tool} is not installed")
    prefix = Path(sys.base_prefix).resolve()
    if any(prefix == Path(r) or Path(r) in prefix.parents for r in _REPLACED):
        raise SandboxUnavailable(f"the interpreter lives in {prefix}, under a folder the sandbox replaces ({_REPLACED})")


def run_in_container(context: Path, input_folder: Path, output_folder: Path, command: list[str] | None = None, *,
                     uid: int, gid: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``command`` (default: the image's entrypoint ``/var/holoscan/tools``) as the container would.

    ``output_folder`` is made writable for ``uid``; ``input_folder`` is mounted read-only.
    """
    check_available()
    dockerfile = context / "Dockerfile"
    workdir = dockerfile_workdir(dockerfile)
    python_bin = str(Path(sys.executable).parent)
    env = {**dockerfile_env(dockerfile), "HOME": "/home/holoscan", "USER": "holoscan", "LANG": "C.UTF-8",
           "PATH": f"/home/holoscan/.local/bin:{python_bin}:/usr/local/bin:/usr/bin:/bin"}
    if os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    os.chown(output_folder, uid, gid)
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    stack_kib = STACK_KIB if hard == resource.RLIM_INFINITY else min(STACK_KIB, hard // 1024)
    blocked, child = _blocked_ancestor(Path(sys.base_prefix).resolve())
    argv = ["unshare", "--mount", "--net", "--fork", "bash", "-c", _SCRIPT, "sandbox",
            str(context), str(input_folder), str(output_folder), str(uid), str(gid), str(stack_kib), blocked, child,
            workdir, "env", "-i", *(f"{k}={v}" for k, v in sorted(env.items())), *(command or [f"{workdir}/tools"])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
