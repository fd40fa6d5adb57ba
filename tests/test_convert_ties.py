"""``tie_encoder_decoder`` through the converter: both copies in every written checkpoint, one rule when they differ.

Transformers 5.x ignores ``tie_encoder_decoder``, so a tied checkpoint must hold the encoder's
copy of every shared weight beside the decoder's (4.57 loads both and ties; 5.x loads each).
``encdec convert`` (every target format, sharded or not) and ``encdec compose --tie`` write
both copies, exactly as the models' ``save_pretrained`` do. A checkpoint whose copies differ
converts to what encdec's loaders compute on it: PyTorch weights (what 5.x saves after
training a tied model without tying) convert untied, both copies as they are and
``tie_encoder_decoder: false`` in config.json; TF and Flax files, which the loaders load tied,
keep the decoder's copy. Either way one warning says so.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conversion import runners
from conversion.compose import compose
from conversion.formats import FORMATS, convert, detect, open_source, read_canonical
from encdec_core.formats.naming import tables_for
from encdec_core.loading import differing_tied_copies
from encdec_core.tables import tied_copies, with_tied_copies
from tests.conftest import FIXTURES, expected
from tests.tolerances import assert_close

TIED = FIXTURES / "bert2bert_tied"
CONFIG = detect(TIED / "pt").config
COPIES = tied_copies(CONFIG)
DIFFERENT = "encoder.encoder.layer.1.output.dense.bias"  # the encoder copy a "5.x" writer trained apart
MESSAGE = "tie_encoder_decoder could not be honoured because the copies differ"
# the framework that reads each target format (the PT backend reads PyTorch names only)
READER = {"pt": "pt", "bin": "pt", "tf": "tf", "h5": "tf", "flax": "flax", "msgpack": "flax"}


def decoder_arrays() -> dict[str, np.ndarray]:
    """Transformers 4.57's one-copy file: the decoder's copies only."""
    return load_file(TIED / "pt" / "model.safetensors")


def assert_both_copies(folder: Path, want: dict[str, np.ndarray]) -> None:
    """Every tied copy is in ``folder`` under its canonical name, equal to the decoder's copy in ``want``."""
    with open_source(folder) as src:
        for t in COPIES:
            assert t.pt in src and t.source in src, (folder, t.pt)
            assert np.array_equal(src.get(t.pt), src.get(t.source)), (folder, t.pt)
            assert np.array_equal(src.get(t.pt), want[t.source]), (folder, t.pt)


def test_the_fixture_is_a_one_copy_tied_checkpoint():
    assert CONFIG.tie_encoder_decoder and len(COPIES) == 37
    assert not any(t.pt in decoder_arrays() for t in COPIES)


@pytest.mark.parametrize("shard", [None, "40KB"], ids=["single", "sharded"])
@pytest.mark.parametrize("to", FORMATS)
def test_convert_of_a_tied_checkpoint_holds_both_copies(tmp_path, to, shard):
    out = convert(TIED / "pt", tmp_path / to, to=to, max_shard_size=shard)
    assert detect(out).sharded == bool(shard)
    assert_both_copies(out, decoder_arrays())
    _, _, arrays = read_canonical(out)  # read back: the stored weights, unchanged
    assert set(arrays) == set(decoder_arrays())
    assert all(np.array_equal(arrays[k], v) for k, v in decoder_arrays().items())


def test_convert_to_pt_writes_what_save_pretrained_writes(tmp_path):
    """The same names and values, byte for byte, as the PyTorch model's save_pretrained (both formats)."""
    from encdec_pt import EncoderDecoderModel

    model = EncoderDecoderModel.from_pretrained(TIED / "pt")
    model.save_pretrained(tmp_path / "saved")
    out = convert(TIED / "pt", tmp_path / "converted", to="pt")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "saved" / "model.safetensors").read_bytes()
    model.save_pretrained(tmp_path / "saved_bin", safe_serialization=False)
    with open_source(tmp_path / "saved_bin") as theirs, open_source(convert(out, tmp_path / "bin", to="bin")) as ours:
        assert set(theirs.keys()) <= set(ours.keys())  # ours also keeps the LM head's tied duplicate, as HF's .bin
        for k in theirs.keys():
            assert np.array_equal(theirs.get(k), ours.get(k)), k


@pytest.mark.parametrize("to", FORMATS)
def test_converted_tied_checkpoint_reloads_with_the_reference_logits(tmp_path, to):
    out = convert(TIED / "pt", tmp_path / to, to=to)
    e = expected("bert2bert_tied")
    batch = {k: e[k] for k in ("input_ids", "attention_mask", "labels")}
    framework = READER[to]
    got = runners.forward(framework, runners.load(framework, out), batch)
    assert_close(got["logits"], e["a.logits"], what=f"{to} read by {framework}")


def test_pt_conversion_loads_alike_when_the_tie_is_ignored(tmp_path):
    """What Transformers 5.x does (no tie: each side from its own copy) gives 4.57's logits too."""
    import torch

    from encdec_pt import EncoderDecoderModel

    out = convert(TIED / "pt", tmp_path / "pt", to="pt")
    untied = copy.deepcopy(CONFIG)
    untied.tie_encoder_decoder = False
    model, report = EncoderDecoderModel.from_pretrained(out, config=untied, output_loading_info=True)
    assert not report.missing and not report.unexpected and not report.mismatched, report
    e = expected("bert2bert_tied")
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")}).logits
    assert_close(logits.numpy(), e["a.logits"], what="two-copy conversion loaded untied")


def test_compose_tie_holds_both_copies(tmp_path):
    warm = FIXTURES / "warm" / "bert"
    out = compose(warm, warm, tmp_path / "tied", tie=True, decoder_start_token_id=2, pad_token_id=0)
    config = detect(out).config
    assert config.tie_encoder_decoder
    stored = load_file(out / "model.safetensors")
    copies = tied_copies(config)
    assert len(copies) == 37
    for t in copies:
        assert np.array_equal(stored[t.pt], stored[t.source]), t.pt
    assert set(stored) == {p.pt for p in tables_for(config, "encoder-decoder").full}  # every weight of both sides


def _bump(a):
    """A non-uniform change (a constant shift of a bias before LayerNorm would change no output)."""
    return a + np.linspace(-1.0, 1.0, a.size, dtype=np.float32).reshape(a.shape)


def _differing(folder: Path, fmt: str = "pt") -> Path:
    """A two-copy checkpoint as Transformers 5.x saves it after training: one encoder copy trained apart.

    In another format (``bin``, ``msgpack``) the same weight's encoder copy is changed in that file.
    """
    if fmt == "pt":
        arrays = with_tied_copies(CONFIG, decoder_arrays())
        arrays[DIFFERENT] = _bump(arrays[DIFFERENT])
        folder.mkdir()
        save_file(arrays, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for side in ("config.json", "generation_config.json"):
            shutil.copyfile(TIED / "pt" / side, folder / side)
    elif fmt == "bin":
        import torch

        from conversion.pt_bin import read_pytorch_bin, write_pytorch_bin

        convert(TIED / "pt", folder, to="bin")
        state = {k: v.clone() for k, v in read_pytorch_bin(folder).items()}
        state[DIFFERENT] = torch.from_numpy(_bump(state[DIFFERENT].numpy()))
        write_pytorch_bin(state, folder)
    else:
        from conversion.flax_msgpack import read_flax_msgpack, write_flax_msgpack

        convert(TIED / "pt", folder, to="msgpack")
        flat = read_flax_msgpack(folder)
        key = DIFFERENT.replace(".", "/")
        flat[key] = _bump(np.asarray(flat[key]))
        write_flax_msgpack(flat, folder)
    return folder


def _pt_reference(src: Path, fmt: str) -> np.ndarray:
    """The logits of encdec_pt's ``EncoderDecoderModel.from_pretrained`` on the source: what convert must keep."""
    from encdec_pt import EncoderDecoderModel

    model = EncoderDecoderModel.from_pretrained(
        src, log_report=False, **({"from_flax": True} if fmt == "msgpack" else {})
    )
    return runners.forward("pt", model, BATCH)["logits"]


BATCH = {k: expected("bert2bert_tied")[k] for k in ("input_ids", "attention_mask", "labels")}
TWIN = DIFFERENT.replace("encoder.", "decoder.bert.", 1)  # the decoder's copy of DIFFERENT
UNTIED = "tie_encoder_decoder cannot be honoured"
TARGETS = ("pt", "bin", "h5", "msgpack")


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.mark.parametrize("source", ["pt", "bin"])
def test_differing_copies_convert_untied_computing_what_the_loaders_compute(tmp_path, caplog, source):
    """PyTorch weights whose copies differ (5.x's save) convert untied: both copies, as encdec and 5.x load them."""
    src = _differing(tmp_path / "five", source)
    with open_source(src) as s:  # the file holds both copies, and they differ
        enc, dec = s.get(DIFFERENT), s.get(TWIN)
    assert not np.array_equal(enc, dec)
    assert differing_tied_copies(CONFIG, src) == [DIFFERENT]  # the loaders' rule sees the same weight
    want = _pt_reference(src, source)
    # the untied model computes other numbers than the tied one (the decoder's copy for both)
    assert np.max(np.abs(want - expected("bert2bert_tied")["a.logits"])) > 1e-3
    config_in = json.loads((src / "config.json").read_text())
    for to in TARGETS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="encdec"):
            out = convert(src, tmp_path / f"{source}-{to}", to=to)
        (message,) = _warnings(caplog, "tie_encoder_decoder")  # one warning, saying what was done
        assert message.startswith(f"{src}: {UNTIED}") and f"{DIFFERENT} vs {TWIN}" in message, message
        assert "1 shared weight(s) differ" in message and "the converted model is untied" in message, message
        assert "computes what the source computes in Transformers 5.x and in encdec" in message, message
        config_out = json.loads((out / "config.json").read_text())
        assert config_out["tie_encoder_decoder"] is False
        assert {k: v for k, v in config_out.items() if k != "tie_encoder_decoder"} == {
            k: v for k, v in config_in.items() if k != "tie_encoder_decoder"
        }  # the sub-configs (and every other field) unchanged
        assert detect(out).config.tie_encoder_decoder is False
        with open_source(out) as o:  # both copies as they are in the source
            assert np.array_equal(o.get(DIFFERENT), enc) and np.array_equal(o.get(TWIN), dec), to
            for t in COPIES:
                assert t.pt in o and t.source in o, (to, t.pt)
        framework = READER[to]
        got = runners.forward(framework, runners.load(framework, out), BATCH)["logits"]
        assert_close(got, want, what=f"{source} -> {to} read by {framework} vs encdec_pt on the source")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="encdec"):
            read_canonical(out)
        assert not _warnings(caplog, "tie_encoder_decoder")  # what was written is consistent: untied, as said


def test_differing_copies_of_a_flax_file_keep_the_decoders_copy_as_the_loaders_do(tmp_path, caplog):
    """TF and Flax files are loaded tied by encdec (the decoder's copy): convert keeps that, and says so."""
    src = _differing(tmp_path / "five", "msgpack")
    with open_source(src) as s:
        assert not np.array_equal(s.get(DIFFERENT), s.get(TWIN))
    want = _pt_reference(src, "msgpack")
    assert_close(want, expected("bert2bert_tied")["a.logits"], what="encdec_pt on the msgpack source: tied")
    for to in TARGETS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="encdec"):
            out = convert(src, tmp_path / f"msgpack-{to}", to=to)
        (message,) = _warnings(caplog, "tie_encoder_decoder")
        assert MESSAGE in message and DIFFERENT in message and "the decoder's copy is kept" in message, message
        assert json.loads((out / "config.json").read_text())["tie_encoder_decoder"] is True
        assert_both_copies(out, decoder_arrays())  # the encoder's copy is the decoder's again
        framework = READER[to]
        got = runners.forward(framework, runners.load(framework, out), BATCH)["logits"]
        assert_close(got, want, what=f"msgpack -> {to} read by {framework} vs encdec_pt on the source")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="encdec"):
            read_canonical(out)
        assert not _warnings(caplog, "tie_encoder_decoder")


def test_differing_copies_are_named_by_the_cli(tmp_path):
    src = tmp_path / "five"
    _differing(src)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "conversion.cli", "convert", str(src), str(tmp_path / "out"), "--to", "pt"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert out.returncode == 0, out.stderr
    assert UNTIED in out.stderr and DIFFERENT in out.stderr and "the converted model is untied" in out.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_encoder_decoder"] is False
    with open_source(src) as s, open_source(tmp_path / "out") as o:
        for t in COPIES:
            assert np.array_equal(o.get(t.pt), s.get(t.pt)) and np.array_equal(o.get(t.source), s.get(t.source))


def test_equal_copies_say_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="encdec"):
        for fmt in ("pt", "pt_bin", "tf", "flax"):
            read_canonical(TIED / fmt)
        read_canonical(convert(TIED / "pt", tmp_path / "pt", to="pt"))
    assert "could not be honoured" not in caplog.text
