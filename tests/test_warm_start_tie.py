"""Warm-starting a shared model (Rothe et al.'s BERTShare) in the three backends, as Transformers does it.

``from_encoder_decoder_pretrained(enc, dec, tie_encoder_decoder=True)``: arguments without an
``encoder_``/``decoder_`` prefix are fields of the EncoderDecoderConfig, and the tie makes the
encoder use the *decoder's* base weights (HF's ``_tie_encoder_decoder_weights``). The encoder
checkpoint here differs from the decoder's, so a tie in the wrong direction fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from encdec_core import BertConfig, InputError
from encdec_pt import BertModel, EncoderDecoderModel

WARM = FIXTURES / "warm"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The warm-start BERT fixture as decoder, and another BERT of the same shape as encoder."""
    folder = tmp_path_factory.mktemp("tie")
    torch.manual_seed(5)
    config = BertConfig.from_json_file(WARM / "bert" / "config.json")
    BertModel.from_config(config).save_pretrained(folder / "other-bert")
    return folder / "other-bert", WARM / "bert"


def _batch():
    return {
        "input_ids": np.array([[2, 11, 12, 13, 3], [2, 21, 22, 3, 0]]),
        "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "labels": np.array([[13, 12, 11, 3], [22, 21, 3, -100]]),
    }


def test_tie_in_every_backend_uses_the_decoder_weights(parts, tmp_path):
    from encdec_flax import FlaxEncoderDecoderModel
    from encdec_tf import TFEncoderDecoderModel

    enc, dec = parts
    tokens = dict(decoder_start_token_id=2, pad_token_id=0)
    pt = EncoderDecoderModel.from_encoder_decoder_pretrained(enc, dec, tie_encoder_decoder=True, **tokens).eval()
    decoder_only = BertModel.from_pretrained(dec)
    assert pt.config.tie_encoder_decoder
    assert torch.equal(
        pt.encoder.encoder.layer[0].attention.self.query.weight,
        decoder_only.encoder.layer[0].attention.self.query.weight,
    )
    batch = _batch()
    pt_out = pt(**{k: torch.from_numpy(v) for k, v in batch.items()})
    for cls in (TFEncoderDecoderModel, FlaxEncoderDecoderModel):
        model = cls.from_encoder_decoder_pretrained(enc, dec, tie_encoder_decoder=True, **tokens)
        assert model.config.tie_encoder_decoder, cls.__name__
        # the new cross-attention weights differ per backend: copy PyTorch's through a save
        pt.save_pretrained(tmp_path / "pt")
        loaded = cls.from_pretrained(tmp_path / "pt")
        out = loaded(**batch)
        np.testing.assert_allclose(np.asarray(out.logits), pt_out.logits.detach().numpy(), atol=1e-5)
        model.save_pretrained(tmp_path / cls.__name__)
        again = EncoderDecoderModel.from_pretrained(tmp_path / cls.__name__, strict=True)
        assert again.config.tie_encoder_decoder and again.num_parameters() == pt.num_parameters()
        assert torch.equal(
            again.encoder.embeddings.word_embeddings.weight, decoder_only.embeddings.word_embeddings.weight
        ), cls.__name__


@pytest.mark.parametrize("backend", ["tf", "flax"])
def test_unknown_unprefixed_argument_is_an_error(backend):
    if backend == "tf":
        from encdec_tf import TFEncoderDecoderModel as cls
    else:
        from encdec_flax import FlaxEncoderDecoderModel as cls
    with pytest.raises(InputError, match="unknown argument"):
        cls.from_encoder_decoder_pretrained(WARM / "bert", WARM / "gpt2", n_positions=40)
