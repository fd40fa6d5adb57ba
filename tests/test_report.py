"""LoadingReport: one-line summary, one log line, one strict error listing every key."""

from __future__ import annotations

import json
import logging

import pytest

from encdec_core.errors import CheckpointError, ShapeMismatchError
from encdec_core.report import LoadingReport, group_names

CROSS = [f"decoder.bert.encoder.layer.{i}.crossattention.self.{p}.weight" for i in range(12) for p in ("query", "key")]


def test_group_names():
    assert group_names(CROSS) == [
        "decoder.bert.encoder.layer.{0..11}.crossattention.self.query.weight",
        "decoder.bert.encoder.layer.{0..11}.crossattention.self.key.weight",
    ]
    assert group_names(["l.0.w", "l.1.w"]) == ["l.{0,1}.w"]
    assert group_names(["h.0.a.0", "h.0.a.1", "h.1.a.0", "h.1.a.1"]) == ["h.{0,1}.a.{0,1}"]
    assert group_names(["h.0.w", "h.1.w", "h.2.w", "h.4.w", "x"]) == ["h.{0..2,4}.w", "x"]
    assert group_names(["a.0.w", "b.1.w"]) == ["a.0.w", "b.1.w"]
    assert group_names([]) == []


def test_ok_report_summary_and_info_log(caplog):
    report = LoadingReport(expected_new=CROSS + ["enc_to_dec_proj.weight"], tied=["decoder.cls.w"], source="ckpt/")
    assert report.ok
    report.raise_if(strict=True)  # nothing to raise
    assert str(report) == (
        "ckpt/: 25 newly initialised [decoder.bert.encoder.layer.{0..11}.crossattention.self.query.weight, "
        "decoder.bert.encoder.layer.{0..11}.crossattention.self.key.weight, enc_to_dec_proj.weight]; 1 tied"
    )
    with caplog.at_level(logging.DEBUG, logger="encdec.test"):
        report.log(logging.getLogger("encdec.test"))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "\n" not in caplog.records[0].getMessage()
    assert str(LoadingReport(source="x")) == "x: all weights loaded"


def bad_report() -> LoadingReport:
    return LoadingReport(
        missing=[f"encoder.layer.{i}.output.dense.weight" for i in range(30)],
        unexpected=["cls.predictions.bias", "encoder.pooler.dense.weight"],
        mismatched=[("decoder.lm_head.weight", (99, 36), (36, 99))],
        expected_new=CROSS,
        source="/models/b2b",
    )


def test_bad_report_warns_once_with_counts(caplog):
    report = bad_report()
    assert not report.ok
    with caplog.at_level(logging.DEBUG, logger="encdec.test"):
        report.log(logging.getLogger("encdec.test"))
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    line = caplog.records[0].getMessage()
    assert line.startswith("/models/b2b: 30 missing [encoder.layer.{0..29}.output.dense.weight]")
    assert "2 unexpected [cls.predictions.bias, encoder.pooler.dense.weight]" in line
    assert "1 mismatched [decoder.lm_head.weight: expected (99, 36), got (36, 99)]" in line
    assert "24 newly initialised" in line and "\n" not in line


def test_summary_limits_groups():
    report = LoadingReport(unexpected=[f"k{i}" for i in range(5)])
    assert str(report) == "checkpoint: 5 unexpected [k0, k1, k2, +2 more]"
    assert report.summary(limit=10).endswith("[k0, k1, k2, k3, k4]")


def test_strict_raises_one_error_listing_every_key():
    report = bad_report()
    report.raise_if(strict=False)  # lenient: no error
    with pytest.raises(CheckpointError) as info:
        report.raise_if(strict=True)
    assert not isinstance(info.value, ShapeMismatchError)
    msg = str(info.value)
    assert msg.startswith("strict load from /models/b2b refused: 30 missing, 2 unexpected, 1 mismatched")
    for key in report.missing + report.unexpected:
        assert f"\n  {key}" in msg
    assert "decoder.lm_head.weight: expected (99, 36), got (36, 99)" in msg
    assert "crossattention" not in msg  # expected-new weights are not problems


def test_only_mismatches_raise_shape_mismatch_error():
    report = LoadingReport(mismatched=[("a.weight", (3, 5), (5, 3)), ("b.bias", [7], [11])], source="f.safetensors")
    with pytest.raises(
        ShapeMismatchError,
        match=r"(?s)a\.weight: expected \(3, 5\), got \(5, 3\).*b\.bias: expected \(7,\), got \(11,\)",
    ):
        report.raise_if(strict=True)


def test_to_dict_is_json_ready():
    d = bad_report().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["mismatched"] == [["decoder.lm_head.weight", [99, 36], [36, 99]]]
    assert set(d) == {"source", "missing", "unexpected", "expected_new", "mismatched", "tied", "untied"}


def test_prefixed_and_merge():
    enc = LoadingReport(unexpected=["pooler.w"], tied=["t"], source="bert/")
    dec = LoadingReport(
        expected_new=["bert.encoder.layer.0.crossattention.q"], mismatched=[("h", (1,), (2,))], source="gpt/"
    )
    merged = LoadingReport.merge(
        [enc.prefixed("encoder."), dec.prefixed("decoder.")], extra_new=["enc_to_dec_proj.weight"]
    )
    # Checkpoint keys stay as the checkpoint spells them; model weight names get the prefix.
    assert merged.unexpected == ["pooler.w"] and merged.tied == ["encoder.t"]
    assert merged.expected_new == ["decoder.bert.encoder.layer.0.crossattention.q", "enc_to_dec_proj.weight"]
    assert merged.mismatched == [("h", (1,), (2,))]
    assert merged.source == "bert/ + gpt/"
    assert LoadingReport.merge([]).ok
