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

# Never reach the network from tests: hub lookups use pre-filled caches only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def expected(pair: str) -> dict[str, np.ndarray]:
    """Inputs and Transformers 4.57 outputs for the fixture's padded batch."""
    return load_file(FIXTURES / pair / "expected.safetensors")


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
