"""Result UIDs (operators/lib/uids.py): the derivation its docstring states, pinned, because a PACS
replaces a re-sent result only while the same inputs keep giving the same UIDs."""

from __future__ import annotations

import uuid

import pytest

from operators.lib.uids import NAMESPACE, case_key, derived_uid, frame_of_reference_uid, result_uids, tracking_uid


def _by_the_docstring(*parts: str) -> str:
    return f"2.25.{uuid.uuid5(NAMESPACE, chr(0x1F).join(parts)).int}"


def test_result_uids_follow_the_documented_derivation():
    series, instance = result_uids("1.2.3.4", "1.0.0", "zones", "sr")
    assert series == _by_the_docstring("1.2.3.4", "1.0.0", "zones", "sr", "series")
    assert instance == _by_the_docstring("1.2.3.4", "1.0.0", "zones", "sr", "instance")
    assert frame_of_reference_uid("1.2.3.4") == _by_the_docstring("1.2.3.4", "frame-of-reference")
    assert tracking_uid("1.2.3.4", "1.0.0", "zones", "Lung opacity") == _by_the_docstring("1.2.3.4", "1.0.0", "zones", "tracking", "Lung opacity")
    # pinned: the namespace and the separator are part of the contract with every PACS that stored a result
    assert derived_uid("a", "b") == "2.25.226431268639914149379253315349752474693"


def test_the_case_key_is_the_case_id_else_the_sources_uid():
    from pydicom import Dataset

    source = Dataset()
    source.SOPInstanceUID = "1.2.3.4"
    assert case_key(source, "1.2.3.4_2") == "1.2.3.4_2"
    assert case_key(source, None) == case_key(source, "") == "1.2.3.4"


def test_every_part_changes_the_uids_and_series_differs_from_instance():
    base = result_uids("1.2.3.4", "1.0.0", "zones", "sr")
    for changed in (("1.2.3.5", "1.0.0", "zones", "sr"), ("1.2.3.4", "1.0.1", "zones", "sr"),
                    ("1.2.3.4", "1.0.0", "weighted", "sr"), ("1.2.3.4", "1.0.0", "zones", "seg-binary")):
        other = result_uids(*changed)
        assert other[0] != base[0] and other[1] != base[1], changed
    assert base[0] != base[1]
    assert len(base[0]) <= 64 and set(base[0]) <= set("0123456789.")


@pytest.mark.parametrize("parts", [(), ("a", ""), ("a", 3), ("",)])
def test_empty_or_non_string_parts_are_refused(parts):
    with pytest.raises(ValueError, match="non-empty strings"):
        derived_uid(*parts)
