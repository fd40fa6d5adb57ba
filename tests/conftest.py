"""Shared test helpers: the committed fixtures, tiny configs with odd distinct sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

FIXTURES = Path(__file__).parent / "fixtures"
PAIRS = ["bert2bert", "bert2gpt2", "roberta2roberta", "bert2gpt2_proj", "bert2bert_tied"]
# the families of issue 16, one pair each (tests/test_families.py)
FAMILY_PAIRS = [
    "xlmr2camembert",
    "bertgen2bertgen",
    "bertgen2bertgen_tied",
    "electra2electra",
    "distilbert2gpt2",
    "bert2bart",
    "bert2mbart",
    "bertrel2bertrel",
]

# Never reach the network from tests: hub lookups use pre-filled caches only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def expected(pair: str) -> dict[str, np.ndarray]:
    """Inputs and Transformers 4.57 outputs for the fixture's padded batch."""
    return load_file(FIXTURES / pair / "expected.safetensors")


# the per-layer outputs of run B that every backend compares with Transformers'
REFERENCE_FIELDS = (
    "encoder_hidden_states",
    "encoder_attentions",
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
)


def compare_to_reference(a, b, e, what: str, fields=REFERENCE_FIELDS) -> dict[str, float]:
    """Every output of runs A (labels) and B (all outputs) against Transformers' arrays ``e``, each within
    the fp32 tolerance (any backend's tensors); returns the largest difference per kind."""
    from tests.tolerances import assert_close

    diffs = {
        "loss": assert_close(np.reshape(np.asarray(a.loss), (1,)), e["a.loss"].reshape(1), what=f"{what} loss"),
        "logits": max(
            assert_close(a.logits, e["a.logits"], what=f"{what} logits (labels run)"),
            assert_close(b.logits, e["b.logits"], what=f"{what} logits"),
        ),
        "encoder_last_hidden_state": assert_close(
            b.encoder_last_hidden_state, e["b.encoder_last_hidden_state"], what=f"{what} encoder state"
        ),
    }
    for field in fields:
        ours = getattr(b, field)
        refs = sorted((k for k in e if k.startswith(f"b.{field}.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        assert len(ours) == len(refs), f"{what} {field}: {len(ours)} tensors, reference has {len(refs)}"
        diffs[field] = max(assert_close(ours[i], e[key], what=f"{what} {field}[{i}]") for i, key in enumerate(refs))
    return diffs


def generations(pair: str) -> dict:
    return json.loads((FIXTURES / pair / "generate.json").read_text())


@pytest.fixture(params=PAIRS)
def pair(request) -> str:
    return request.param


def tiny_sizes(**over):
    """BERT/RoBERTa sizes: hidden 36, 3 heads, intermediate 37, vocab 99, 2 layers."""
    base = dict(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
    )
    base.update(over)
    return base


def tiny_gpt2(**over):
    base = dict(vocab_size=99, n_embd=36, n_layer=2, n_head=3, n_inner=37, n_positions=40)
    base.update(over)
    return base
