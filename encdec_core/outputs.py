"""Model outputs with HF's field names, shared by the three backends.

An output behaves like HF's ``ModelOutput``: a ``dict`` of the fields that are set (``None``
fields are left out) that is also a dataclass, so ``out.logits``, ``out["logits"]``,
``"loss" in out``, ``keys()`` / ``values()`` / ``items()`` / ``get()``, iteration over the
keys, ``out[0]`` and ``to_tuple()`` over the set fields, in field order, all work as in HF.
Being a real ``dict`` matters to code written for HF: Transformers' Trainer reads
``outputs["loss"]`` when ``isinstance(outputs, dict)`` and drops ``ignore_keys`` by name.

>>> out = Seq2SeqLMOutput(logits=[[0.5]])
>>> "loss" in out, list(out.keys()), out[0] is out.logits, out.get("loss", "none")
(False, ['logits'], True, 'none')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from encdec_core.errors import InputError


def _is_pair_list(value: Any, names: set[str]) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(p, tuple) and len(p) == 2 and p[0] in names for p in value)
    )


class ModelOutput(dict):
    """Base of every output: a dataclass whose set fields are also its ``dict`` items."""

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)
        names = {f.name for f in fields}
        first = getattr(self, fields[0].name)
        rest_unset = all(getattr(self, f.name) is None for f in fields[1:])
        # tf.nest and keras.tree rebuild a Mapping as ``type(m)((key, value) for key in m)``:
        # such a call puts an iterator of pairs into the first field (HF's ModelOutput accepts it too)
        if rest_unset and (isinstance(first, (dict, Iterator)) or _is_pair_list(first, names)):
            pairs = list(first.items() if isinstance(first, dict) else first)
            if all(isinstance(p, tuple) and len(p) == 2 and p[0] in names for p in pairs):
                object.__setattr__(self, fields[0].name, None)
                for key, value in pairs:
                    object.__setattr__(self, key, value)
        self._sync()

    def _sync(self) -> None:
        """The dict items: the fields that are not None, in field order (as ``to_tuple``)."""
        dict.clear(self)
        for f in dataclasses.fields(self):
            value = self.__dict__.get(f.name)
            if value is not None:
                dict.__setitem__(self, f.name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in self.__dataclass_fields__:
            self._sync()

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.__dataclass_fields__:
            raise KeyError(
                f"{type(self).__name__} has no field {key!r}; expected one of {list(self.__dataclass_fields__)}"
            )
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return self.to_tuple()[key]

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} fields are set by attribute or item assignment; "
            "they cannot be removed, popped or updated in bulk (as in HF's ModelOutput)"
        )

    __delitem__ = pop = popitem = setdefault = update = clear = _refuse

    def __reduce__(self):
        # pickling / deepcopy rebuild from the field values (the dict items follow from them)
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def to_tuple(self) -> tuple:
        """The set fields' values, in field order (``None`` fields skipped, as in HF)."""
        return tuple(dict.values(self))


@dataclass(eq=False)  # no generated __eq__: tensor fields have no truth value
class BaseModelOutput(ModelOutput):
    """An encoder's (or decoder base model's) outputs."""

    last_hidden_state: Any = None  # (B, T, D)
    pooler_output: Any = None  # (B, D), BERT/RoBERTa encoders only
    hidden_states: Any = None  # tuple of n_layers + 1 (B, T, D)
    past_key_values: Any = None
    attentions: Any = None  # tuple of n_layers (B, H, T, T_total)
    cross_attentions: Any = None  # tuple of n_layers (B, H, T, S)


@dataclass(eq=False)  # no generated __eq__: tensor fields have no truth value
class CausalLMOutput(ModelOutput):
    """A causal LM's outputs (HF ``CausalLMOutputWithCrossAttentions``)."""

    loss: Any = None
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None
    cross_attentions: Any = None


@dataclass(eq=False)  # no generated __eq__: tensor fields have no truth value
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


@dataclass(eq=False)  # no generated __eq__: tensor fields have no truth value
class GenerateOutput(ModelOutput):
    """What ``generate`` returns as an output object (HF ``GenerateEncoderDecoderOutput`` / ``...BeamEncoderDecoderOutput``).

    PyTorch and TF return it with ``return_dict_in_generate=True`` (else the ids), Flax always
    (as HF's ``FlaxGreedySearchOutput`` / ``FlaxBeamSearchOutput``: read ``.sequences``).
    """

    sequences: Any = None  # (B * num_return_sequences, T) token ids, decoder start first
    scores: Any = None  # with output_scores: tuple per step of (rows, V) processed scores
    sequences_scores: Any = None  # beam search: (B * num_return_sequences,) final hypothesis scores
    beam_indices: Any = None  # beam search: (B * num_return_sequences, T - prompt) row chosen at each step, -1 after
    # assisted decoding (prompt_lookup_num_tokens / assistant_model): verifying decoder calls, candidate tokens
    # that could have been kept, and those kept; accepted_tokens / candidate_tokens is the acceptance rate
    decoder_calls: Any = None
    candidate_tokens: Any = None
    accepted_tokens: Any = None


# ------------------------------------------------------------------ building outputs (the three wrappers)
def run_layers(blocks, x, step, *, output_hidden_states: bool, output_attentions: bool, keep_presents: bool):
    """Run a layer stack as Transformers does, collecting what its layers return (any framework).

    ``step(i, block, x)`` -> (x, present, self-attention probs, cross-attention probs or None).
    Returns (x, extra): ``extra["hidden_states"]`` the input of each layer (the caller appends
    the last), ``"past_key_values"`` the presents (with ``keep_presents``), ``"attentions"`` and
    ``"cross_attentions"`` (with ``output_attentions``; cross only where a layer attended across).
    """
    hidden, attns, cross, presents = [], [], [], []
    for i, block in enumerate(blocks):
        if output_hidden_states:
            hidden.append(x)
        x, present, p_self, p_cross = step(i, block, x)
        presents.append(present)
        attns.append(p_self)
        cross.append(p_cross)
    has_cross = any(p is not None for p in cross)
    return x, {
        "hidden_states": hidden,
        "past_key_values": tuple(presents) if keep_presents else None,
        "attentions": tuple(attns) if output_attentions else None,
        "cross_attentions": tuple(cross) if output_attentions and has_cross else None,
    }


def as_encoder_output(encoder_outputs: Any) -> Any:
    """``encoder_outputs`` as a :class:`BaseModelOutput`; HF's tuple order is (last_hidden_state, hidden_states, attentions)."""
    if isinstance(encoder_outputs, (tuple, list)):
        t = list(encoder_outputs) + [None, None]
        return BaseModelOutput(last_hidden_state=t[0], hidden_states=t[1], attentions=t[2])
    return encoder_outputs


def encoder_states(encoder_outputs: Any) -> Any:
    """The (B, S, D_enc) states of ``encoder_outputs``: an output object, HF's tuple, or the array itself."""
    if encoder_outputs is None or hasattr(encoder_outputs, "shape"):
        return encoder_outputs
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs.last_hidden_state
    if isinstance(encoder_outputs, (tuple, list)) and encoder_outputs:
        return encoder_outputs[0]
    raise InputError(
        f"encoder_outputs expected the output of encode(), a tuple or an array, got {type(encoder_outputs).__name__}"
    )


def seq2seq_output(loss: Any, decoder: Any, encoder: Any, past_key_values: Any = None) -> Seq2SeqLMOutput:
    """The wrapper's output from the decoder's and the encoder's (HF's field names)."""
    encoder = encoder if encoder is not None else BaseModelOutput()
    return Seq2SeqLMOutput(
        loss=loss,
        logits=decoder.logits,
        past_key_values=past_key_values if past_key_values is not None else decoder.past_key_values,
        decoder_hidden_states=decoder.hidden_states,
        decoder_attentions=decoder.attentions,
        cross_attentions=decoder.cross_attentions,
        encoder_last_hidden_state=encoder.last_hidden_state,
        encoder_hidden_states=encoder.hidden_states,
        encoder_attentions=encoder.attentions,
    )


def causal_lm_output(base: Any, logits: Any, loss: Any, return_dict: bool | None) -> Any:
    """A causal LM's output from its base model's, its logits (B,T,V) and its loss (or None)."""
    out = CausalLMOutput(
        loss=loss,
        logits=logits,
        past_key_values=base.past_key_values,
        hidden_states=base.hidden_states,
        attentions=base.attentions,
        cross_attentions=base.cross_attentions,
    )
    return out if return_dict is None or return_dict else out.to_tuple()


__all__ = [
    "run_layers",
    "ModelOutput",
    "BaseModelOutput",
    "CausalLMOutput",
    "Seq2SeqLMOutput",
    "GenerateOutput",
    "as_encoder_output",
    "encoder_states",
    "seq2seq_output",
    "causal_lm_output",
]
