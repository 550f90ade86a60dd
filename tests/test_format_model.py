"""The typed header (d3fmt.format.model) reads and writes exactly the header's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d3fmt.format import D3Reader, encode_d3
from d3fmt.format.example import example_container
from d3fmt.format.model import BudgetRecord, Header, Subtask, TensorNames
from d3fmt.format.sections import decoder_section, soft_section, tensor_names

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.d3"))


def canonical(header: dict) -> str:
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_golden_headers_round_trip_exactly(path):
    with D3Reader(path) as r:
        header = r.header
    typed = Header.from_json(header)
    assert canonical(typed.to_json()) == canonical({k: v for k, v in header.items() if k != "sections"})
    assert typed.budget.max_bytes == header["budget"]["max_bytes"] and typed.anchors == header.get("anchors")
    assert typed.subtasks[0].tensors.mu == "s0.mu" if typed.subtasks else typed.anchors["stream"] == "anchors.stream"


def test_optional_and_unknown_keys_survive():
    header = example_container(soft=True).header
    header["future_key"] = {"a": 1}
    header["budget"]["choices"] = {"z_dim": 2}
    header["provenance"]["part"] = {"of": 2}
    typed = Header.from_json(header)
    assert typed.extra == {"future_key": {"a": 1}} and typed.partial is None and typed.train is None
    assert typed.subtasks[0].tensors.soft == "s0.soft"
    assert canonical(typed.to_json()) == canonical(header)
    hard = Header.from_json(example_container().header)
    assert "soft" not in hard.to_json()["subtasks"][0]["tensors"] and "choices" not in hard.to_json()["budget"]


def test_example_writer_bytes_do_not_depend_on_the_typed_round_trip():
    c = example_container(num_subtasks=2, soft=True)
    again = Header.from_json(c.header).to_json()
    c2 = example_container(num_subtasks=2, soft=True)
    c2.header = again
    assert encode_d3(c) == encode_d3(c2)


def test_section_names():
    assert tensor_names(3, ["a.weight"], soft=True) == {"mu": "s3.mu", "logvar": "s3.logvar",
                                                        "decoder": {"a.weight": "s3.dec.a.weight"}, "soft": "s3.soft"}
    assert decoder_section(0, "fc.bias") == "s0.dec.fc.bias" and soft_section(2) == "s2.soft"
    names = TensorNames.of(1, ["w"])
    assert names.soft is None and names.to_json() == {"mu": "s1.mu", "logvar": "s1.logvar", "decoder": {"w": "s1.dec.w"}}
    s = Subtask(id=1, classes=[4, 5], latents_per_class=2, z_dim=8, decoder={"family": "small"}, tensors=names)
    assert Subtask.from_json(s.to_json()) == s
    b = BudgetRecord(ipc=1.0, max_bytes=10, bytes_used=0, ipc_equivalent_fp32=0.0, ipc_equivalent_uint8=0.0)
    assert BudgetRecord.from_json(b.to_json()) == b


def test_source_date_epoch_pins_the_creation_time(monkeypatch):
    """SOURCE_DATE_EPOCH (reproducible builds) fixes provenance.created; a bad value is a clear error."""
    from d3fmt.errors import ConfigError
    from d3fmt.format.model import utc_now

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1765000000")
    assert utc_now() == "2025-12-06T05:46:40Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        utc_now()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert utc_now() != "2025-12-06T05:46:40Z" and len(utc_now()) == 20
