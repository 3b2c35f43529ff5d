"""Publishing a result folder: staged under a hidden name, renamed into place whole, tidied after a crash.

A case's files are written into a hidden staging folder ``.<case>.<pid>.<random>.partial`` inside
the output folder, which :func:`publish_folder` renames to ``<case>`` only when complete, so a crash
never leaves a partial result. :func:`clean_stale_staging` removes what an interrupted run left —
only hidden names of this module's patterns, only when the process that made them is gone. Case names
come from :func:`operators.lib.case_naming.case_folder_name`, which never yields a hidden name, so
nothing of the output folder can be renamed or deleted through a name taken from an input file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def staging_folder(output: Path, case_id: str) -> Path:
    """A new hidden staging folder for ``case_id`` inside ``output`` (readable by others, like the result)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{case_id}.{os.getpid()}.", suffix=".partial", dir=output))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the published result folder is for others to read
    return staging


#: Hidden names a run writes into the output folder before renaming: ``.<case>.<pid>.<random>.partial``
#: (staging folders), ``.<case>.old-<pid>`` (a previous result being replaced) and
#: ``.<name>.<pid>.<random>.tmp`` (summary.json being written).
_STAGING = re.compile(r"^\.(?P<case>.+)\.(?P<pid>\d+)\.[^.]+\.partial$")
_OLD = re.compile(r"^\.(?P<case>.+)\.old-(?P<pid>\d+)$")
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp$")


def publish_folder(staging: Path, final: Path) -> None:
    """Move a fully written staging folder to its final name; an older result is replaced whole."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staging, final)
        if old.is_symlink():  # a user's link: remove the link, never what it points to
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own name from an earlier life of this pid (a container restarts as pid 1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(output: Path) -> list[str]:
    """Tidy what an interrupted run (killed, power loss) left in ``output``; return what was done.

    Only hidden names this writer creates are touched, and only when the process that made them is
    gone: staging folders and temporary files are removed; a ``.<case>.old-<pid>`` folder (a
    complete earlier result caught between the two renames of :func:`publish_folder`) is put back
    when ``<case>`` is missing, else removed. Visible results are never touched.
    """
    done: list[str] = []
    try:
        entries = list(os.scandir(output))
    except OSError:
        return done
    for entry in entries:
        for pattern in (_STAGING, _OLD, _TEMPORARY):
            match = pattern.match(entry.name)
            if match is None or _alive(int(match["pid"])):
                continue
            path = Path(entry.path)
            try:
                if pattern is _OLD and not (output / match["case"]).exists():
                    os.replace(path, output / match["case"])
                    done.append(f"restored {match['case']} from {entry.name}")
                elif entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                    done.append(f"removed {entry.name}")
                else:
                    path.unlink()
                    done.append(f"removed {entry.name}")
            except OSError as exc:
                logger.warning("Could not tidy %s left by an interrupted run: %s", path, exc)
            break
    for line in done:
        logger.warning("Output folder %s: %s (left by an interrupted run).", output, line)
    return done


