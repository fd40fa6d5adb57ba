"""What the three wrappers share, tested once over the backends: refused decoders, warm-start reports, strict loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encdec_core import BertConfig, CheckpointError, ConfigError, EncoderDecoderConfig, GPT2Config
from encdec_core.checkpoint import CheckpointReader
from encdec_core.tables import tied_copies
from tests.conftest import FIXTURES, expected, tiny_gpt2, tiny_sizes
from tests.test_transformers_api import BACKENDS, as_numpy, wrapper

WARM = FIXTURES / "warm"


def parts(backend):
    """(BertModel, BertLMHeadModel, GPT2LMHeadModel) of a backend that builds its wrapper from parts."""
    if backend == "pt":
        from encdec_pt import BertLMHeadModel, BertModel, GPT2LMHeadModel
    else:
        from encdec_tf import BertLMHeadModel, BertModel, GPT2LMHeadModel
    return BertModel, BertLMHeadModel, GPT2LMHeadModel


@pytest.mark.parametrize("backend", ["pt", "tf"])
def test_random_init_from_configs_like_the_seed(backend):
    encoder, decoder, _ = parts(backend)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**tiny_sizes()), BertConfig(**tiny_sizes()))
    model = wrapper(backend)(config=config)
    assert isinstance(model.encoder, encoder) and isinstance(model.decoder, decoder)
    assert model.decoder.config.is_decoder and model.decoder.config.add_cross_attention
    assert model.enc_to_dec_proj is None


@pytest.mark.parametrize("backend", ["pt", "tf"])
def test_build_from_two_models_and_projection(backend):
    encoder, _, gpt2 = parts(backend)
    enc = encoder(BertConfig(**tiny_sizes()))
    dec = gpt2(GPT2Config(**tiny_gpt2(n_embd=45, n_head=5), is_decoder=True, add_cross_attention=True))
    model = wrapper(backend)(encoder=enc, decoder=dec)
    proj = model.enc_to_dec_proj
    # (out, in) as torch's Linear stores it; Keras' kernel is (in, out)
    assert tuple(proj.weight.shape if backend == "pt" else proj.kernel.shape) == (
        (45, 36) if backend == "pt" else (36, 45)
    )
    assert model.config.encoder is enc.config  # one config object, seen from both sides


@pytest.mark.parametrize("backend", ["pt", "tf"])  # Flax builds its wrapper from a config only
def test_decoder_without_cross_attention_is_refused(backend):
    encoder, decoder, _ = parts(backend)
    dec = decoder(BertConfig(**tiny_sizes(), is_decoder=True))
    with pytest.raises(ConfigError, match="must be built with add_cross_attention=True"):
        wrapper(backend)(encoder=encoder(BertConfig(**tiny_sizes())), decoder=dec)


@pytest.mark.parametrize("backend", ["pt", "tf"])  # Flax's, with its init count: test_flax_io
@pytest.mark.parametrize("enc,dec", [("bert", "bert"), ("bert", "gpt2"), ("roberta", "roberta"), ("bert", "gpt2_45")])
def test_warm_start_reports_exactly_the_new_weights(backend, enc, dec):
    """from_encoder_decoder_pretrained lists as new what Transformers 4.57 initialised, no more."""
    combos = json.loads((WARM / "expected_new.json").read_text())["combos"]
    ref = next(c for c in combos if c["encoder"] == enc and c["decoder"] == dec)
    report = wrapper(backend).from_encoder_decoder_pretrained(WARM / enc, WARM / dec).loading_report
    hf_new = {f"decoder.{k}" for k in ref["decoder_missing_keys_newly_initialised"]} - set(report.tied)
    hf_new |= set(ref["wrapper_new_weights"])
    assert set(report.expected_new) == hf_new
    assert not report.missing and not report.mismatched
    assert set(report.unexpected) == set(ref["decoder_unexpected_keys_unused"]) | set(
        ref["encoder_unexpected_keys_unused"]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_load_lists_every_problem(backend):
    other = wrapper(backend).from_pretrained(FIXTURES / "bert2gpt2" / "pt").config
    with pytest.raises(CheckpointError) as err:
        wrapper(backend).from_pretrained(FIXTURES / "bert2bert" / "pt", config=other, strict=True)
    msg = str(err.value)
    assert (
        "decoder.transformer.h.1.mlp.c_fc.weight" in msg and "decoder.bert.encoder.layer.1.output.dense.weight" in msg
    )


def labelled_logits(backend, model, e) -> np.ndarray:
    """The logits of the fixture's labels run, with the backend's tensors."""
    batch = {k: e[k] for k in ("input_ids", "attention_mask", "labels")}
    if backend == "pt":
        import torch

        with torch.no_grad():
            return as_numpy(model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits)
    return as_numpy(model(**{k: v.astype(np.int32) for k, v in batch.items()} if backend == "flax" else batch).logits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", ["bert2gpt2", "bert2bert_tied", "bert2gpt2_proj", "roberta2roberta"])
def test_canonical_save_round_trip(tmp_path, backend, pair):
    """Loaded from Transformers' files and saved: the same model again, and what Transformers' PyTorch class writes."""
    model = wrapper(backend).from_pretrained(FIXTURES / pair / "pt")
    model.save_pretrained(tmp_path / "out")
    again = wrapper(backend).from_pretrained(tmp_path / "out", strict=True)
    e = expected(pair)
    np.testing.assert_array_equal(labelled_logits(backend, model, e), labelled_logits(backend, again, e))
    # the same names, order and bytes, metadata {"format": "pt"}; a tied save also holds the encoder's copies
    # (Transformers 5 ignores the tie: tests/test_transformers5.py)
    ours, theirs = CheckpointReader(tmp_path / "out"), CheckpointReader(FIXTURES / pair / "pt")
    copies = {t.pt for t in tied_copies(model.config)}
    assert [k for k in ours.keys() if k not in copies] == list(theirs.keys()) and copies <= set(ours.keys())
    assert ours.metadata == {"format": "pt"}
    for k in theirs.keys():
        np.testing.assert_array_equal(ours.get(k), theirs.get(k), err_msg=k)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "encoder-decoder" and cfg["architectures"] == ["EncoderDecoderModel"]
