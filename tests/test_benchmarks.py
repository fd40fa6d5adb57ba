"""Smoke test of the benchmark harness: a --tiny run of our side only (no Transformers needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # `benchmarks` is not an installed package; a bare `pytest` does not add the root
    sys.path.insert(0, ROOT)

from benchmarks import run as bench  # noqa: E402
from encdec_pt import EncoderDecoderModel  # noqa: E402

GEN_TASKS = ["greedy", "beam4", "sample"] if hasattr(EncoderDecoderModel, "generate") else []


def test_tiny_run_of_ours(tmp_path):
    tasks = ["load", "forward", *GEN_TASKS, "train_step"]
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    result = bench.main(
        [
            "--tiny",
            "--sides",
            "ours",
            "--pairs",
            "bert2gpt2",
            "--tasks",
            ",".join(tasks),
            "--repeat",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--batch",
            "3",
            "--cache",
            str(tmp_path / "cache"),
            "--md",
            str(md),
            "--json",
            str(js),
        ]
    )

    assert [r["task"] for r in result["rows"]] == tasks
    assert result["workload"]["batch"] == 3  # --batch reaches every task's inputs (out_shape below)
    for row in result["rows"]:
        ours = row["ours"]
        assert ours["error"] is None, (row["task"], ours["error"])
        assert len(ours["times_s"]) == 1 and ours["median_s"] > 0
        assert row["theirs"] is None  # not run: blank cells, no ratio
        assert row["flops"] >= 0 and row["bytes"] > 0 and row["floor_s"] > 0
        if row["task"] in GEN_TASKS:
            assert ours["out_shape"] == [result["workload"]["batch"], result["workload"]["new_tokens"] + 1]
    load = result["rows"][0]
    assert load["ours"]["n_params"] > 0 and load["weights_bytes"] == 4 * load["ours"]["n_params"]
    assert result["limits"]["gemm_flops"] > 0 and result["limits"]["bandwidth"] > 0

    text = md.read_text()
    assert "python -m benchmarks.run --tiny" in text and result["meta"]["commit"] in text
    assert "| pt | forward | bert2gpt2 |" in text
    assert json.loads(js.read_text())["rows"][0]["task"] == "load"


def test_table_blanks_and_errors():
    ok = {"error": None, "median_s": 0.02, "peak_bytes": 3 << 20}
    row = {"framework": "pt", "pair": "bert2bert", "task": "greedy", "floor_s": 0.01, "weights_bytes": None}
    rows = [
        dict(row, ours=ok, theirs={"error": None, "median_s": 0.01, "peak_bytes": 1 << 20}),
        dict(row, ours={"error": "AttributeError: no | generate", "median_s": None}, theirs=ok),
        dict(row, ours=ok, theirs=None),
    ]
    lines = bench.table({"rows": rows}).splitlines()[2:]
    assert lines[0] == "| pt | greedy | bert2bert | 20.0 | 10.0 | 2.00 | 3 | 1 | 10.0 | 2.0 |"
    assert "error: AttributeError: no / generate" in lines[1] and "| 20.0 |  |" in lines[1]
    assert lines[2] == "| pt | greedy | bert2bert | 20.0 |  |  | 3 |  | 10.0 | 2.0 |"


def test_tiny_convert_task_of_ours(tmp_path):
    """The convert task: a composed bert2bert to tf_model.h5 and flax_model.msgpack, each in a fresh process."""
    result = bench.main(
        [
            "--tiny",
            "--sides",
            "ours",
            "--pairs",
            "bert2bert",
            "--tasks",
            "convert",
            "--repeat",
            "1",
            "--warmup",
            "0",
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    rows = result["rows"]
    assert [(r["framework"], r["task"], r["target"]) for r in rows] == [
        ("tf", "convert", "h5"),
        ("flax", "convert", "msgpack"),
    ]
    for row in rows:
        assert row["ours"]["error"] is None, row["ours"]["error"]
        assert row["ours"]["median_s"] > 0 and row["ours"]["out_bytes"] > row["weights_bytes"] * 0.5
        assert row["theirs"] is None and row["flops"] == 0 and row["floor_s"] > 0
    assert "| tf | convert to h5 | bert2bert |" in bench.table(result)


def test_compiled_rows_join_two_processes():
    """benchmarks.compiled (TF/Flax rows): each side's probe JSON becomes the harness' table cells, no subprocess."""
    from benchmarks import compiled

    assert compiled.side_env("tf", "theirs")["TF_USE_LEGACY_KERAS"] == "1"  # Transformers' TF needs tf-keras
    assert "TF_USE_LEGACY_KERAS" not in compiled.side_env("tf", "ours")  # ours needs Keras 3
    assert compiled.side_env("tf", "theirs")["USE_TORCH"] != "1"  # USE_TORCH=1 + USE_TF=1 disables both
    sub = {"first_s": 2.5, "times_s": [0.4, 0.6], "median_s": 0.5, "compile_s": 2.0, "out_shape": [4, 33]}
    ours = {"errors": {}, "load_s": 0.25, "load_peak_bytes": 1 << 20, "n_params": 10, "xla": sub, "plain": sub}
    theirs = {"errors": {"xla": "ValueError: boom"}, "load_s": 1.0, "load_peak_bytes": None, "plain": sub}
    assert compiled._cell(ours, "greedy")["median_s"] == 0.5 and compiled._cell(ours, "compile")["median_s"] == 2.0
    assert compiled._cell(ours, "load")["median_s"] == 0.25
    assert compiled._cell(theirs, "greedy")["error"] == "ValueError: boom"
    assert compiled._cell(theirs, "plain generate")["median_s"] == 0.5
    failed = {"errors": {"load": "ImportError: x"}}
    assert (
        compiled._cell(failed, "plain generate")["error"] == "ImportError: x" and compiled._cell(None, "load") is None
    )
    row = {
        "framework": "tf",
        "pair": "bert2gpt2",
        "task": "compile",
        "floor_s": None,
        "weights_bytes": None,
        "ours": compiled._cell(ours, "compile"),
        "theirs": compiled._cell(ours, "compile"),
    }
    assert (
        bench.table({"rows": [row]}).splitlines()[2] == "| tf | compile | bert2gpt2 | 2000 | 2000 | 1.00 |  |  |  |  |"
    )


def test_merge_puts_each_transformers_version_in_its_own_column_group(tmp_path, capsys):
    """benchmarks.merge: one row per (framework, task, pair); each run's ratio is its own ours/theirs."""
    from benchmarks import merge

    def cell(s):
        return {"error": None, "median_s": s, "peak_bytes": None}

    def result(version, rows):
        meta = {"versions": {"transformers": version, "torch": "2.13"}, "command": "c", "date": "d", "commit": "x"}
        meta["machine"] = {"torch_threads": 1}
        return {"meta": meta, "limits": {"gemm_flops": 1e11, "bandwidth": 2e10}, "rows": rows}

    def row(task, ours, theirs, floor=0.5):
        return {"framework": "pt", "task": task, "pair": "bert2bert", "floor_s": floor, "ours": ours, "theirs": theirs}

    v4 = result("4.57.1", [row("greedy", cell(2.0), cell(4.0)), row("beam4", cell(3.0), cell(6.0))])
    v5 = result("5.24.0", [row("greedy", cell(1.8), cell(3.0)), row("sample", cell(2.0), None)])
    paths = [tmp_path / "v4.json", tmp_path / "v5.json"]
    for path, res in zip(paths, (v4, v5), strict=True):
        path.write_text(json.dumps(res))
    lines = merge.main([str(p) for p in paths]).splitlines()
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("| fw"))) :]
    assert "ours/HF 4.57.1" in table[0] and "ours/HF 5.24.0" in table[0]
    assert table[2] == "| pt | greedy | bert2bert | 2000 | 4000 | 0.50 | 1800 | 3000 | 0.60 | 500.0 | 3.6 |"
    assert table[3] == "| pt | beam4 | bert2bert | 3000 | 6000 | 0.50 |  |  |  | 500.0 | 6.0 |"
    assert table[4] == "| pt | sample | bert2bert |  |  |  | 2000 |  |  | 500.0 | 4.0 |"
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit):
        merge.main([str(tmp_path / "bad.json")])
    assert f"{tmp_path / 'bad.json'}: expected the JSON of" in capsys.readouterr().err  # the error names the file


def test_rows_times_the_three_kernels_of_one_product():
    from tolerances import RTOL

    from benchmarks import rows

    out = rows.main(["--layers", "1", "--rows", "1,3", "--repeat", "1", "--threads", "1"])
    assert [r["rows"] for r in out] == [1, 3]
    for r in out:
        assert all(r[k] > 0 for k in ("F.linear", "weight-first", "prepacked"))
        assert r["max_diff"] <= RTOL["float32"]  # another summation order only: no layout or transpose error
