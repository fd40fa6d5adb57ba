"""PyTorch EncoderDecoderModel behaviour: build, warm-start, save/load, ties, forward semantics."""

from __future__ import annotations

import pytest
import torch

from encdec_core import BertConfig, CheckpointError, ConfigError, EncoderDecoderConfig, GPT2Config, InputError
from encdec_core.checkpoint import CheckpointReader
from encdec_pt import BertModel, EncoderDecoderModel, GPT2LMHeadModel
from encdec_pt.modeling_utils import PreTrainedModel
from tests.conftest import FIXTURES, expected, tiny_gpt2, tiny_sizes
from tests.tolerances import assert_close

WARM = FIXTURES / "warm"


def _batch(e):
    return {k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")}


def _logits(model, e):
    with torch.no_grad():
        return model(**_batch(e)).logits


@pytest.fixture
def bert2gpt2():
    return EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")


def test_random_init_ties_the_lm_head():
    """The parts' types and flags: tests/test_wrappers.py; here the PyTorch tie."""
    model = EncoderDecoderModel(
        config=EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**tiny_sizes()), BertConfig(**tiny_sizes()))
    )
    assert model.get_output_embeddings().weight is model.decoder.bert.embeddings.word_embeddings.weight


def test_random_init_gives_every_weight_hf_init():
    """The seed's ``EncoderDecoderModel(config=config)``: no uninitialised memory (GPT-2's Conv1D was torch.empty)."""
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**tiny_sizes()), GPT2Config(**tiny_gpt2()))
    model = EncoderDecoderModel(config=config)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and p.abs().max() <= 1.0, name
    assert float(model.decoder.transformer.h[0].crossattention.c_attn.weight.detach().std()) == pytest.approx(
        0.02, rel=0.2
    )
    assert torch.isfinite(GPT2LMHeadModel(GPT2Config(**tiny_gpt2())).transformer.h[0].attn.c_attn.weight).all()


def test_warm_start_keeps_pretrained_weights_and_prefixed_kwargs():
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        WARM / "bert", WARM / "gpt2", decoder_n_positions=40, encoder_hidden_dropout_prob=0.0
    )
    enc_ref = BertModel.from_pretrained(WARM / "bert")
    dec_ref = GPT2LMHeadModel.from_pretrained(WARM / "gpt2")
    assert torch.equal(model.encoder.encoder.layer[1].output.dense.weight, enc_ref.encoder.layer[1].output.dense.weight)
    assert torch.equal(model.decoder.transformer.h[0].attn.c_attn.weight, dec_ref.transformer.h[0].attn.c_attn.weight)
    assert model.config.encoder.hidden_dropout_prob == 0.0
    # the new cross-attention got HF's init: zero bias, unit LayerNorm, small normal weights
    h0 = model.decoder.transformer.h[0]
    assert torch.all(h0.crossattention.c_attn.bias == 0) and torch.all(h0.ln_cross_attn.weight == 1)
    assert 0.005 < h0.crossattention.q_attn.weight.std().item() < 0.05


def test_warm_start_takes_the_wrapper_special_tokens():
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        WARM / "bert", WARM / "gpt2", decoder_start_token_id=2, pad_token_id=0
    )
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (2, 0)
    assert "start_token_id" not in model.config.decoder.extra


def test_warm_start_unprefixed_arguments_are_wrapper_config_fields(tmp_path):
    """As in HF (the warm-starting blog's BERTShare): ``tie_encoder_decoder=True`` shares the encoder with the decoder."""
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(WARM / "bert", WARM / "bert", tie_encoder_decoder=True)
    assert model.config.tie_encoder_decoder
    assert (
        model.encoder.encoder.layer[0].attention.self.query.weight
        is model.decoder.bert.encoder.layer[0].attention.self.query.weight
    )
    model.save_pretrained(tmp_path / "shared")
    again = EncoderDecoderModel.from_pretrained(tmp_path / "shared", strict=True)
    assert again.config.tie_encoder_decoder and again.num_parameters() == model.num_parameters()
    with pytest.raises(InputError, match="unknown argument"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(WARM / "bert", WARM / "gpt2", n_positions=40)


def test_warm_start_with_model_instances():
    enc = BertModel.from_pretrained(WARM / "bert")
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(None, WARM / "gpt2", encoder_model=enc)
    assert model.encoder is enc


def test_load_does_not_random_init_what_the_checkpoint_fills(monkeypatch):
    calls = []
    orig = PreTrainedModel.init_weights

    def spy(self, names=None):
        calls.append(names)
        return orig(self, names)

    monkeypatch.setattr(PreTrainedModel, "init_weights", spy)
    EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt")
    assert calls == [[]]  # one call, initialising nothing


def test_sharded_save_and_bf16(tmp_path, bert2gpt2):
    bert2gpt2.save_pretrained(tmp_path / "sh", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "sh").glob("model-*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "sh" / "model.safetensors.index.json").exists()
    e = expected("bert2gpt2")
    assert torch.equal(_logits(EncoderDecoderModel.from_pretrained(tmp_path / "sh"), e), _logits(bert2gpt2, e))

    bert2gpt2.save_pretrained(tmp_path / "bf16", torch_dtype=torch.bfloat16)
    assert CheckpointReader(tmp_path / "bf16").dtype("decoder.transformer.wte.weight") == "BF16"
    half = EncoderDecoderModel.from_pretrained(tmp_path / "bf16", torch_dtype="auto")
    assert half.decoder.transformer.wte.weight.dtype == torch.bfloat16
    full = EncoderDecoderModel.from_pretrained(tmp_path / "bf16")  # cast to fp32 by default
    assert full.decoder.transformer.wte.weight.dtype == torch.float32
    assert_close(_logits(full, e), _logits(bert2gpt2, e), dtype="bfloat16", what="bf16 round trip")


def test_bin_save_round_trip(tmp_path, bert2gpt2):
    bert2gpt2.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    e = expected("bert2gpt2")
    assert torch.equal(_logits(EncoderDecoderModel.from_pretrained(tmp_path / "bin"), e), _logits(bert2gpt2, e))


def test_save_keeps_user_files(tmp_path, bert2gpt2):
    out = tmp_path / "ckpt"
    bert2gpt2.save_pretrained(out)
    (out / "tokenizer.json").write_text("{}")
    bert2gpt2.save_pretrained(out)
    assert (out / "tokenizer.json").read_text() == "{}"


def test_tie_encoder_decoder_shares_parameters():
    model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert_tied" / "pt")
    assert (
        model.encoder.encoder.layer[0].attention.self.query.weight
        is model.decoder.bert.encoder.layer[0].attention.self.query.weight
    )
    assert model.encoder.embeddings.word_embeddings.weight is model.get_output_embeddings().weight
    cross = model.decoder.bert.encoder.layer[0].crossattention.self.query.weight
    assert all(cross is not p for p in model.encoder.parameters())
    n_unique = len({id(p) for p in model.parameters()})
    untied = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt")
    assert n_unique < len({id(p) for p in untied.parameters()})


def test_labels_loss_is_mean_over_non_ignored_tokens(bert2gpt2):
    e = expected("bert2gpt2")
    b = _batch(e)
    with torch.no_grad():
        out = bert2gpt2(**b)
        keep = b["labels"] != -100
        logp = out.logits.log_softmax(-1).gather(-1, b["labels"].clamp(min=0)[..., None])[..., 0]
    assert_close(out.loss, -(logp[keep]).mean(), what="loss")
    assert keep.sum() < keep.numel()  # the fixture really has ignored positions


def test_encoder_outputs_as_object_or_tuple_and_return_dict_false(bert2gpt2):
    e = expected("bert2gpt2")
    b = _batch(e)
    with torch.no_grad():
        full = bert2gpt2(**b)
        enc = bert2gpt2.get_encoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        from_obj = bert2gpt2(encoder_outputs=enc, attention_mask=b["attention_mask"], labels=b["labels"])
        from_tuple = bert2gpt2(
            encoder_outputs=(enc.last_hidden_state,), attention_mask=b["attention_mask"], labels=b["labels"]
        )
        as_tuple = bert2gpt2(**b, return_dict=False)
    assert torch.equal(from_obj.logits, full.logits) and torch.equal(from_tuple.logits, full.logits)
    with torch.no_grad():
        enc_all = bert2gpt2.get_encoder()(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            output_hidden_states=True,
            output_attentions=True,
        )
        from_long_tuple = bert2gpt2(
            encoder_outputs=(enc_all.last_hidden_state, enc_all.hidden_states, enc_all.attentions),
            attention_mask=b["attention_mask"],
            labels=b["labels"],
        )
    assert (
        from_long_tuple.encoder_attentions is enc_all.attentions
        and from_long_tuple.past_key_values is not enc_all.attentions
    )
    assert torch.equal(as_tuple[0], full.loss) and torch.equal(as_tuple[1], full.logits)


def test_output_fields_and_shapes(bert2gpt2):
    e = expected("bert2gpt2")
    b = _batch(e)
    with torch.no_grad():
        out = bert2gpt2(**b, output_attentions=True, output_hidden_states=True)
    assert out.logits.shape == (3, 7, 99)
    assert len(out.decoder_hidden_states) == 3 and len(out.encoder_hidden_states) == 3
    assert out.cross_attentions[0].shape == (3, 3, 7, 11)
    assert out.encoder_last_hidden_state.shape == (3, 11, 36)
    assert len(out.past_key_values) == 2 and len(out.past_key_values[0]) == 4  # self k, v; cross k, v


def test_decoder_kwargs_are_routed(bert2gpt2):
    e = expected("bert2gpt2")
    b = _batch(e)
    with torch.no_grad():
        base = bert2gpt2(**b).logits
        shifted = bert2gpt2(**b, decoder_position_ids=torch.arange(1, 8)[None]).logits
    assert not torch.allclose(base, shifted)


def test_missing_special_tokens_is_a_clear_error(bert2gpt2):
    bert2gpt2.config.decoder_start_token_id = None
    with pytest.raises(InputError, match="decoder_start_token_id"):
        bert2gpt2(**_batch(expected("bert2gpt2")))


def test_out_of_vocab_ids_are_refused(bert2gpt2):
    b = _batch(expected("bert2gpt2"))
    b["input_ids"][0, 0] = 99
    with pytest.raises(InputError, match=r"input_ids holds token id 99.*vocab_size"):
        bert2gpt2(**b)


def test_gradient_checkpointing_gives_the_same_gradients(bert2gpt2):
    """Same seed, dropout on: recomputation under checkpointing replays the same masks."""
    b = _batch(expected("bert2gpt2"))
    bert2gpt2.train()
    torch.manual_seed(0)
    bert2gpt2(**b).loss.backward()
    ref = {n: p.grad.clone() for n, p in bert2gpt2.named_parameters() if p.grad is not None}
    bert2gpt2.zero_grad()
    bert2gpt2.gradient_checkpointing_enable()
    torch.manual_seed(0)
    bert2gpt2(**b).loss.backward()
    assert len(ref) > 50
    for n, p in bert2gpt2.named_parameters():
        if n in ref:
            assert_close(p.grad, ref[n], what=f"grad {n}")


def test_wrong_model_type_for_class_is_refused():
    with pytest.raises(ConfigError, match="cannot be loaded into GPT2LMHeadModel"):
        GPT2LMHeadModel.from_pretrained(WARM / "bert")


def test_missing_weights_file_names_the_folder(tmp_path):
    (tmp_path / "config.json").write_text((WARM / "bert" / "config.json").read_text())
    # every format is read (issue 15): the error names them all and the folder's contents
    with pytest.raises(
        CheckpointError,
        match=r"no weights found; expected model.safetensors, pytorch_model.bin, "
        r"tf_model.h5 or flax_model.msgpack .*holds \['config.json'\]",
    ):
        BertModel.from_pretrained(tmp_path)
