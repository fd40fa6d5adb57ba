"""The issue-16 families in the TF backend: compiled cached decoding equals the full forward, h5 round trip.

The growing-tuple cache of these decoders is tested with the others in tests/test_tf_cache.py.

The decoders are CamemBERT, BertGeneration, ELECTRA, BART, MBart and BERT with relative_key_query
positions (whose cached steps put query ``i`` at ``past + i`` and key ``s`` at slot ``s``);
tests/test_families.py compares every family with Transformers.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from encdec_core import InputError
from encdec_tf import TFEncoderDecoderModel
from encdec_tf.models import BartForCausalLM, DistilBertModel, ElectraForCausalLM
from tests.conftest import FIXTURES
from tests.test_tf_cache import FAMILY_DECODERS as DECODERS
from tests.test_tf_cache import _padded_mask, _setup
from tests.tolerances import assert_close


@pytest.mark.parametrize("pair", DECODERS)
def test_compiled_preallocated_steps_equal_the_full_forward(pair):
    """A 3-token prompt then one token per step, through one XLA trace per input shape."""
    model, e, full, enc = _setup(pair)
    ids = tf.constant(e["decoder_input_ids"])
    b, t = ids.shape
    step = tf.function(model.decode_step, jit_compile=True)
    cache = model.init_cache(b, t + 2, enc, e["attention_mask"])
    mask = tf.constant(_padded_mask(e, t + 2))
    logits, cache = step(ids[:, :3], cache, mask)
    assert_close(logits, full[:, :3], what=f"{pair} XLA prompt")
    for i in range(3, t):
        logits, cache = step(ids[:, i : i + 1], cache, mask)
        assert int(cache.index) == i + 1
        assert_close(logits[:, 0], full[:, i], what=f"{pair} XLA step {i}")
    assert step.experimental_get_tracing_count() == 2  # the prompt's shape, then every single-token step


@pytest.mark.parametrize("pair", ["bert2bart", "bert2mbart", "electra2electra", "bertgen2bertgen_tied"])
def test_h5_round_trip_keeps_the_numbers(pair, tmp_path):
    """Saved as tf_model.h5 (the tables' TF names) and loaded back: the same logits, nothing new or missing."""
    model, e, full, _ = _setup(pair)
    model.save_pretrained(tmp_path / "h5", save_format="h5")
    again, report = TFEncoderDecoderModel.from_pretrained(tmp_path / "h5", output_loading_info=True)
    assert report.ok and not report.expected_new, str(report)
    logits = again(
        input_ids=e["input_ids"],
        attention_mask=e["attention_mask"],
        decoder_input_ids=e["decoder_input_ids"],
        decoder_attention_mask=e["decoder_attention_mask"],
    ).logits
    np.testing.assert_array_equal(logits.numpy(), full)


def test_bart_positions_ignore_padding_and_scale_the_tokens():
    """BART: position ids are past + arange(T) + 2 whatever the padding; tokens times sqrt(d_model)."""
    lm = BartForCausalLM.from_pretrained(FIXTURES / "bert2bart" / "decoder")
    assert lm.config.embed_scale == pytest.approx(np.sqrt(lm.config.hidden_size))
    ids = np.array([[1, 1, 5, 6]])  # leading pads (pad_token_id 1)
    base = lm.model
    x = base.embed(ids, None, None, None, 0, False).numpy()
    tok = base.embed_tokens.table.numpy()[ids[0]] * lm.config.embed_scale
    pos = base.embed_positions.table.numpy()[2:6]
    assert_close(x[0], base.layernorm_embedding(tf.constant(tok + pos)).numpy(), what="BART embeddings")


def test_untied_electra_head_has_its_own_matrix():
    """ELECTRA with tie_word_embeddings=False: generator_lm_head/kernel (embed_width, V) is a variable of its own."""
    from encdec_core import load_config

    cfg = load_config(FIXTURES / "electra2electra" / "decoder")
    cfg.tie_word_embeddings = False
    lm = ElectraForCausalLM(cfg)
    names = lm.named_variables()
    assert names["generator_lm_head/kernel"].shape == (cfg.embedding_size, cfg.vocab_size)
    assert names["generator_lm_head/kernel"] is not lm.get_input_embeddings().table
    assert lm(input_ids=np.array([[3, 4, 5]])).logits.shape == (1, 3, cfg.vocab_size)


def test_token_types_are_refused_where_there_is_no_table():
    encoder = DistilBertModel.from_pretrained(FIXTURES / "distilbert2gpt2" / "encoder")
    with pytest.raises(InputError, match="token_type_ids.*distilbert"):
        encoder(input_ids=np.array([[3, 4]]), token_type_ids=np.array([[0, 0]]))
