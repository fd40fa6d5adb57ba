"""Model outputs with HF's field names, shared by the three backends.

An output behaves like HF's ``ModelOutput``: attribute access, ``out["logits"]``, ``out[0]``
over the fields that are set (``None`` fields are skipped, as in HF), and ``to_tuple()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelOutput:
    def _items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return dict(self._items())[key]
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self._items())

    def keys(self) -> list[str]:
        return [k for k, _ in self._items()]

    def to_tuple(self) -> tuple:
        return tuple(v for _, v in self._items())


@dataclass
class BaseModelOutput(ModelOutput):
    """An encoder's (or decoder base model's) outputs."""

    last_hidden_state: Any = None  # (B, T, D)
    pooler_output: Any = None  # (B, D), BERT/RoBERTa encoders only
    hidden_states: Any = None  # tuple of n_layers + 1 (B, T, D)
    past_key_values: Any = None
    attentions: Any = None  # tuple of n_layers (B, H, T, T_total)
    cross_attentions: Any = None  # tuple of n_layers (B, H, T, S)


@dataclass
class CausalLMOutput(ModelOutput):
    """A causal LM's outputs (HF ``CausalLMOutputWithCrossAttentions``)."""

    loss: Any = None
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None
    cross_attentions: Any = None


@dataclass
class Seq2SeqLMOutput(ModelOutput):
    """The encoder-decoder's outputs (HF ``Seq2SeqLMOutput``)."""

    loss: Any = None
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None
    decoder_hidden_states: Any = None
    decoder_attentions: Any = None
    cross_attentions: Any = None
    encoder_last_hidden_state: Any = None  # (B, S, D_enc)
    encoder_hidden_states: Any = None
    encoder_attentions: Any = None


@dataclass
class GenerateOutput(ModelOutput):
    """``generate(..., return_dict_in_generate=True)`` (HF ``GenerateEncoderDecoderOutput`` / ``...BeamEncoderDecoderOutput``)."""

    sequences: Any = None  # (B * num_return_sequences, T) token ids, decoder start first
    scores: Any = None  # with output_scores: tuple per step of (rows, V) processed scores
    sequences_scores: Any = None  # beam search: (B * num_return_sequences,) final hypothesis scores
    beam_indices: Any = None  # beam search: (B * num_return_sequences, T - prompt) row chosen at each step, -1 after


__all__ = ["ModelOutput", "BaseModelOutput", "CausalLMOutput", "Seq2SeqLMOutput", "GenerateOutput"]
