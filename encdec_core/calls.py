"""Transformers' call signatures, declared once for the three backends.

A model's ``forward`` (PyTorch) or ``call`` (Keras) takes HF's arguments in HF's order. The
names and order are data here; a backend writes the body once against them::

    @calls.signature("base", training=False)
    def call(self, a):              # a.input_ids, a.attention_mask, ..., a.training
        ...

The wrapper binds positional and keyword arguments into ``a`` (a named tuple of the
signature's fields, every one defaulting to None unless given), raises :class:`ArgumentError`
naming the model, the method and the argument for an unknown or doubled one, and shows the
full signature to ``inspect`` (Keras, Transformers' Trainer and PEFT read it). With
``var_keyword=True`` the other keyword arguments reach the body as ``**kwargs``.
"""

from __future__ import annotations

import functools
import inspect
from collections import namedtuple

from encdec_core.errors import ArgumentError

# kind -> HF's argument names, in HF's order (PyTorch and TF agree)
SIGNATURES: dict[str, tuple[str, ...]] = {
    # BertModel / RobertaModel / GPT2Model (a decoder's base model too)
    "base": (
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "position_ids",
        "inputs_embeds",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "past_key_values",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    ),
    # BertLMHeadModel / RobertaForCausalLM / GPT2LMHeadModel
    "causal_lm": (
        "input_ids",
        "attention_mask",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "past_key_values",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "labels",
        "return_dict",
        "position_ids",
        "inputs_embeds",
        "token_type_ids",
    ),
    # EncoderDecoderModel / TFEncoderDecoderModel
    "seq2seq": (
        "input_ids",
        "attention_mask",
        "decoder_input_ids",
        "decoder_attention_mask",
        "encoder_outputs",
        "past_key_values",
        "inputs_embeds",
        "decoder_inputs_embeds",
        "labels",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    ),
}
# the arguments a causal LM hands to its base model (by name: Keras takes only tensors positionally)
TO_BASE = tuple(n for n in SIGNATURES["causal_lm"] if n in SIGNATURES["base"] and n != "return_dict")

_TUPLES: dict[tuple[str, ...], type] = {}


def arguments(kind: str, **extra) -> type:
    """The named tuple of a signature's fields (HF's, then the backend's ``extra``), all defaulting to None."""
    names = SIGNATURES[kind] + tuple(extra)
    if names not in _TUPLES:
        _TUPLES[names] = namedtuple(f"{kind.title().replace('_', '')}Arguments", names, defaults=(None,) * len(names))
    return _TUPLES[names]


def signature(kind: str, *, var_keyword: bool = False, **extra):
    """Decorate ``body(self, a[, **kwargs])`` into a method with HF's signature of ``kind`` (then ``extra``, with defaults)."""
    fields = arguments(kind, **extra)
    names = fields._fields
    position = {n: i for i, n in enumerate(names)}
    defaults = {**dict.fromkeys(SIGNATURES[kind]), **extra}

    def wrap(body):
        @functools.wraps(body)
        def method(self, *args, **kwargs):
            where = f"{type(self).__name__}.{body.__name__}"
            if len(args) > len(names):
                raise ArgumentError(f"{where}: takes {len(names)} positional arguments, got {len(args)}")
            values = dict(defaults)
            values.update(zip(names, args))
            rest = {}
            for key, value in kwargs.items():
                if key not in position:
                    if not var_keyword:
                        raise ArgumentError(f"{where}: unknown argument '{key}'; expected one of {list(names)}")
                    rest[key] = value
                elif position[key] < len(args):
                    raise ArgumentError(f"{where}: got argument '{key}' twice (by position and by name)")
                else:
                    values[key] = value
            return body(self, fields(**values), **rest)

        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[n]) for n in names]
        if var_keyword:
            params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        method.__signature__ = inspect.Signature(params)
        return method

    return wrap


__all__ = ["SIGNATURES", "TO_BASE", "arguments", "signature"]
