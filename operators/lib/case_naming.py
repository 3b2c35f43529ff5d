"""The name of a case's result folder, from its source's SOP Instance UID — only when that is a valid UID.

A result folder is ``<output>/<name>``. A name taken from a file could otherwise be ``.``, ``..``,
``summary.json``, hidden (``.x.partial``, which the clean-up of interrupted runs would delete), or too
long for the file system. So the SOP Instance UID is the name only when it is a valid UID (digits and
dots, components without leading zeros but "0" itself, at most 64 characters, not starting or ending
with a dot); anything else gets ``case-<12 hex digits of the sha1 of path and UID>`` and a warning.
A second file with a name already taken gets ``<name>_2``, ``_3`` … (also with a warning).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX_LENGTH = 64


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no empty or zero-padded component, at most 64 characters."""
    return 0 < len(value) <= UID_MAX_LENGTH and bool(_UID.match(value))


def case_folder_name(sop_uid: str, path: Path, taken: dict[str, Path]) -> tuple[str, str | None]:
    """(folder name, warning or None) for a source file; ``taken`` maps the names given so far to
    their files, and gets this one."""
    warning = None
    if is_valid_uid(sop_uid):
        base = sop_uid
    else:
        base = "case-" + hashlib.sha1(f"{path}\x1f{sop_uid}".encode()).hexdigest()[:12]
        warning = f"SOP Instance UID {sop_uid[:80]!r} is not a valid UID; results are under {base}."
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    if name != base:
        warning = f"SOP Instance UID {sop_uid[:80]} is shared with {taken[base]}; results are under {name}."
    taken[name] = Path(path)
    return name, warning
