"""Property tests (hypothesis): parsers and readers fed arbitrary input raise only encdec's typed errors.

Each property runs FUZZ_EXAMPLES generated cases, derandomized (the same cases on every run, so CI
is deterministic) and without a per-example deadline (a loaded machine must not fail a test);
a crash with any other exception fails it. The legacy formats' readers: test_fuzz_formats.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encdec_core.checkpoint import CheckpointReader, read_index
from encdec_core.configs import BertConfig, GPT2Config, RobertaConfig, config_from_dict
from encdec_core.errors import EncdecError
from encdec_core.generation import GenerationConfig
from encdec_core.semantics import IGNORE_INDEX, shift_tokens_right
from encdec_core.tables import OPS, model_table

FUZZ_EXAMPLES = int(os.environ.get("ENCDEC_FUZZ_EXAMPLES", "150"))  # a longer hunt: ENCDEC_FUZZ_EXAMPLES=5000
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # the same cases every run; no timing flakes

KEYS = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "n_embd",
    "n_head",
    "n_layer",
    "is_decoder",
    "add_cross_attention",
    "encoder",
    "decoder",
    "pad_token_id",
    "hidden_act",
    "activation_function",
    "layer_norm_eps",
    "tie_word_embeddings",
    "cross_attention_hidden_size",
]
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["bert", "gpt2", "roberta", "encoder-decoder", "gelu", "relu", "swish"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12,
)
config_dicts = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), json_value, max_size=10)


@FUZZ
@given(config_dicts)
def test_config_parsing_raises_only_config_errors(data):
    try:
        config = config_from_dict(data, source="fuzz")
    except EncdecError:
        return
    config_from_dict(config.to_dict(), source="round trip")  # what parsed also writes and re-reads


@FUZZ
@given(st.dictionaries(st.text(max_size=12), json_value, max_size=8))
def test_generation_config_parsing(data):
    try:
        GenerationConfig.from_dict(data)
    except EncdecError:
        pass


index_docs = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {
            "metadata": json_value,
            "weight_map": st.dictionaries(
                st.text(max_size=8),
                st.one_of(
                    st.text(max_size=20),
                    st.sampled_from(["../x.safetensors", "/etc/passwd", "a.safetensors"]),
                    st.integers(),
                ),
                max_size=4,
            ),
        }
    ),
)


@FUZZ
@given(index_docs)
def test_index_parsing_raises_only_checkpoint_errors(doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors.index.json"
        path.write_text(json.dumps(doc))
        try:
            read_index(path)
        except EncdecError:
            pass


@FUZZ
@given(st.integers(1, 4), st.integers(1, 7), st.data())
def test_label_shift_properties(batch, length, data):
    labels = np.array(
        data.draw(
            st.lists(
                st.lists(st.one_of(st.integers(0, 98), st.just(IGNORE_INDEX)), min_size=length, max_size=length),
                min_size=batch,
                max_size=batch,
            )
        )
    )
    out = shift_tokens_right(labels, 0, 2)
    assert out.shape == labels.shape and (out[:, 0] == 2).all() and (out != IGNORE_INDEX).all()
    expected = np.where(labels[:, :-1] == IGNORE_INDEX, 0, labels[:, :-1])
    assert np.array_equal(out[:, 1:], expected)


sizes = st.tuples(
    st.integers(1, 3),
    st.sampled_from([(6, 2), (9, 3), (10, 5)]),
    st.integers(3, 11),
    st.integers(5, 13),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(sizes, st.sampled_from(["bert", "roberta", "gpt2"]), st.sampled_from(["encoder", "decoder"]))
def test_table_ops_round_trip_on_random_configs(size, kind, role):
    layers, (hidden, heads), inter, vocab, cross, tie = size
    if kind == "gpt2":
        config = GPT2Config(
            n_layer=layers,
            n_embd=hidden,
            n_head=heads,
            n_inner=inter,
            vocab_size=vocab,
            add_cross_attention=cross,
            tie_word_embeddings=tie,
        )
    else:
        cls = BertConfig if kind == "bert" else RobertaConfig
        config = cls(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=inter,
            vocab_size=vocab,
            add_cross_attention=cross,
            tie_word_embeddings=tie,
        )
    rng = np.random.default_rng(layers)
    params = model_table(config, role)
    assert len({p.pt for p in params}) == len({p.tf for p in params}) == len({p.flax for p in params}) == len(params)
    for p in params:
        for op in (p.tf_op, p.flax_op):
            a = rng.standard_normal((hidden, inter) if op != "add_axis0" else (inter,)).astype(np.float32)
            back = OPS[OPS[op].inverse].apply(OPS[op].apply(a))
            assert np.array_equal(back, a), (p.pt, op)


def _valid_file(folder: Path) -> bytes:
    arrays = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.int64)}
    path = folder / "model.safetensors"
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "pt"})
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_safetensors_reader_on_mutated_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        raw = bytearray(_valid_file(folder))
        mode = data.draw(st.sampled_from(["flip", "truncate", "header"]))
        if mode == "flip":
            for _ in range(data.draw(st.integers(1, 6))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        elif mode == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:  # a header length that points anywhere
            raw[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        (folder / "model.safetensors").write_bytes(bytes(raw))
        try:
            with CheckpointReader(folder) as reader:
                for key in reader.keys():
                    reader.shape(key)
                    reader.get(key)
                    reader.get_raw(key)
        except EncdecError:
            pass
