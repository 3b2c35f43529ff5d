"""Result UIDs derived from what they describe, so a study processed again replaces its results.

A UUID-derived UID (PS3.5 B.2: ``2.25.`` + the UUID as one integer) from a name-based UUID (RFC 4122
version 5) of the parts: the same source image, algorithm version, preset and object kind always give
the same Series and SOP Instance UIDs; anything else gives different ones. A PACS that receives a
re-sent study's results again stores them over the first copy instead of adding a duplicate series.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom import Dataset

#: the namespace of every UID this app derives (a fixed random UUID: only our own UIDs live in it)
NAMESPACE = uuid.UUID("6d1f7a0e-3c55-4e52-9b1e-1f4d2c9a8e37")


def derived_uid(*parts: str) -> str:
    """``2.25.<uuid5(NAMESPACE, parts joined)>`` — at most 44 characters, digits and dots only."""
    if not parts or any(not isinstance(p, str) or not p for p in parts):
        raise ValueError(f"derived_uid needs non-empty strings; got {parts!r}")
    return f"2.25.{uuid.uuid5(NAMESPACE, chr(0x1F).join(parts)).int}"


def case_key(source: "Dataset", source_key: str | None) -> str:
    """What a result's UIDs derive from: the case id when given, else the source's SOP Instance UID."""
    return source_key or str(source.SOPInstanceUID)


def result_uids(source_key: str, version: str, preset: str, kind: str) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the ``kind`` object made from ``source_key``
    (the case id: the source's SOP Instance UID, with a suffix for a second file of the same UID)."""
    return derived_uid(source_key, version, preset, kind, "series"), derived_uid(source_key, version, preset, kind, "instance")


def frame_of_reference_uid(source_key: str) -> str:
    """The nominal frame of reference shared by every overlay of one source image."""
    return derived_uid(source_key, "frame-of-reference")


def tracking_uid(source_key: str, version: str, preset: str, tracking_id: str) -> str:
    """The Tracking UID of the finding ``tracking_id`` of one source (SEG segments, SR groups): the same
    finding in a rerun, or in another object of the same run, gets the same UID."""
    return derived_uid(source_key, version, preset, "tracking", tracking_id)
