"""The ``encdec`` command, run for real in a subprocess: convert, parity, inspect, compose, generate, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parent.parent
WARM = FIXTURES / "warm"


def _run(*args, code: str | None = None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "conversion.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _clean_error(out, command: str) -> None:
    """Exit 2, one message naming the command, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert f"encdec {command}" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_inspect_reports_parts_and_dtypes():
    out = _run("inspect", str(FIXTURES / "bert2gpt2_proj" / "pt"))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["architecture"] == "bert2gpt2" and info["format"] == "pt" and info["kind"] == "encoder-decoder"
    assert set(info["parameters"]) == {"encoder", "decoder", "enc_to_dec_proj"}
    assert info["parameters"]["enc_to_dec_proj"] == 36 * 45 + 45
    assert info["dtypes"] == {"F32": sum(info["dtypes"].values())}
    assert info["tied"] == ["decoder.lm_head.weight"] and info["expected_new"] == []


def test_inspect_reads_every_format_alike():
    ref = json.loads(_run("inspect", str(FIXTURES / "bert2bert_tied" / "pt")).stdout)
    for fmt, name in [("tf", "h5"), ("flax", "msgpack"), ("pt_bin", "bin")]:
        info = json.loads(_run("inspect", str(FIXTURES / "bert2bert_tied" / fmt)).stdout)
        assert info["format"] == name and info["parameters"] == ref["parameters"] and info["tied"] == ref["tied"]
    warm = _run("inspect", str(WARM / "gpt2"), "--text")
    assert warm.returncode == 0 and "gpt2 decoder, format pt" in warm.stdout
    assert "expected new (8): transformer.h.{0,1}.ln_cross_attn.weight" in warm.stdout  # when used as a decoder


def test_bad_path_is_a_clear_error_and_exit_code(tmp_path):
    _clean_error(_run("inspect", str(tmp_path / "nope")), "inspect")
    (tmp_path / "empty").mkdir()
    out = _run("convert", str(tmp_path / "empty"), str(tmp_path / "out"), "--to", "tf")
    _clean_error(out, "convert")
    assert "no weights found" in out.stderr


def test_convert_and_back_is_bitwise(tmp_path):
    src = FIXTURES / "bert2gpt2" / "pt"
    out = _run("convert", str(src), str(tmp_path / "h5"), "--to", "h5", "--max-shard-size", "40KB")
    assert out.returncode == 0 and "wrote" in out.stdout, out.stderr
    info = json.loads(_run("inspect", str(tmp_path / "h5")).stdout)
    assert info["format"] == "h5" and info["sharded"] and info["files"][0] == "tf_model.h5.index.json"
    assert _run("convert", str(tmp_path / "h5"), str(tmp_path / "back"), "--to", "pt").returncode == 0
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_convert_refuses_to_overwrite_and_names_the_usage_errors(tmp_path):
    src = str(FIXTURES / "bert2gpt2" / "pt")
    assert _run("convert", src, str(tmp_path / "x"), "--to", "flax").returncode == 0
    out = _run("convert", src, str(tmp_path / "x"), "--to", "msgpack")
    _clean_error(out, "convert")
    assert "--overwrite" in out.stderr
    assert _run("convert", src, str(tmp_path / "x"), "--to", "msgpack", "--overwrite").returncode == 0
    bad = _run("convert", src, str(tmp_path / "y"), "--to", "onnx")
    assert bad.returncode == 2 and "invalid choice: 'onnx'" in bad.stderr
    assert _run("convert", src, str(tmp_path / "y"), "--to", "tf", "--max-shard-size", "lots").returncode == 2


def test_parity_passes_fails_on_a_zero_tolerance_and_plots(tmp_path):
    path = str(FIXTURES / "bert2gpt2" / "pt")
    out = _run("parity", path, "--frameworks", "pt,tf", "--no-generate", "--json", "--plot", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["passed"] and report["comparisons"][0]["framework"] == "tf"
    assert (tmp_path / "p.png").stat().st_size > 1000
    strict = _run("parity", path, "--frameworks", "pt,tf", "--no-generate", "--tolerance", "0")
    assert strict.returncode == 1 and "**FAIL**" in strict.stdout and "first over tolerance" in strict.stdout
    _clean_error(_run("parity", str(WARM / "bert"), "--frameworks", "pt,tf"), "parity")  # not an encoder-decoder
    assert _run("parity", path, "--frameworks", "pt").returncode == 2  # one framework: usage error


def test_parity_plot_without_matplotlib_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from conversion.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    out = _run("parity", str(FIXTURES / "bert2gpt2" / "pt"), "--plot", str(tmp_path / "p.png"), code=code)
    _clean_error(out, "parity")
    assert "pip install 'encdec[plot]'" in out.stderr


def test_compose_warm_starts_and_saves_canonically(tmp_path):
    out = _run("compose", str(WARM / "bert"), str(WARM / "gpt2"), str(tmp_path / "b2g"),
               "--decoder-start-token-id", "2", "--pad-token-id", "0")
    assert out.returncode == 0, out.stderr
    info = json.loads(_run("inspect", str(tmp_path / "b2g")).stdout)
    assert info["format"] == "pt" and info["architecture"] == "bert2gpt2" and not info["missing"]
    config = json.loads((tmp_path / "b2g" / "config.json").read_text())
    assert config["decoder_start_token_id"] == 2 and config["pad_token_id"] == 0
    gen = _run("generate", str(tmp_path / "b2g"), "--ids", "5,6,7", "--max-new-tokens", "3")
    assert gen.returncode == 0 and len(gen.stdout.split()) == 4, gen.stderr  # start token + 3 new ones


def test_compose_tie_shares_the_encoder_and_refuses_different_models(tmp_path):
    out = _run("compose", str(WARM / "bert"), str(WARM / "bert"), str(tmp_path / "tied"), "--framework", "flax",
               "--tie", "--decoder-start-token-id", "2", "--pad-token-id", "0")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "tied" / "config.json").read_text())["tie_encoder_decoder"] is True
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), "np") as f:
        assert {k for k in f.keys() if k.startswith("encoder.")} == {"encoder.pooler.dense.weight",
                                                                    "encoder.pooler.dense.bias"}
    bad = _run("compose", str(WARM / "bert"), str(WARM / "gpt2"), str(tmp_path / "bad"), "--tie")
    _clean_error(bad, "compose")
    assert "same kind of model" in bad.stderr


def test_generate_ids_agree_across_frameworks():
    path = str(FIXTURES / "roberta2roberta" / "pt")
    pt = _run("generate", path, "--ids", "5,6,7,8", "--ids", "9,10", "--num-beams", "3", "--max-new-tokens", "5")
    assert pt.returncode == 0, pt.stderr
    assert len(pt.stdout.splitlines()) == 2
    tf = _run("generate", path, "--ids", "5,6,7,8", "--ids", "9,10", "--num-beams", "3", "--max-new-tokens", "5",
              "--framework", "tf", "--json")
    assert tf.returncode == 0, tf.stderr
    assert json.loads(tf.stdout)["ids"] == [[int(t) for t in line.split()] for line in pt.stdout.splitlines()]


def test_generate_text_through_a_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 99)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    out = _run("generate", str(FIXTURES / "bert2bert" / "pt"), "--text", "w5 w6 w7", "--text", "w9",
               "--tokenizer", str(tmp_path / "tokenizer.json"), "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["ids"]) == 2 and all(t.startswith("w") for t in " ".join(result["text"]).split())
    missing = _run("generate", str(FIXTURES / "bert2bert" / "pt"), "--text", "w5")
    _clean_error(missing, "generate")
    assert "--tokenizer" in missing.stderr


def test_generate_text_without_tokenizers_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['tokenizers'] = None; from conversion.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    (tmp_path / "tokenizer.json").write_text("{}")
    out = _run("generate", str(FIXTURES / "bert2bert" / "pt"), "--text", "hi", "--tokenizer",
               str(tmp_path / "tokenizer.json"), code=code)
    _clean_error(out, "generate")
    assert "pip install 'encdec[tokenizers]'" in out.stderr


@pytest.mark.parametrize("command", ["convert", "parity", "inspect", "compose", "generate"])
def test_every_command_has_help(command):
    out = _run(command, "--help")
    assert out.returncode == 0 and f"usage: encdec {command}" in out.stdout
    assert "examples:" in _run("--help").stdout
