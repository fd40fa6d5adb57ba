"""A tiny synthetic seq2seq task for demos, docs and learning tests (numpy only).

Reverse a random sequence of "word" tokens: the target depends on every source token and
on their order, so a model can only solve it by reading the encoder through cross-attention.

>>> src, tgt = reverse_task(2, length=4, seed=0)
>>> bool((tgt[:, :4] == src[:, 1:5][:, ::-1]).all())
True
"""

from __future__ import annotations

import numpy as np

# Special ids of the toy vocabulary (shared by the demo and the tests).
PAD, BOS, EOS = 0, 1, 2
FIRST_WORD = 5


def reverse_task(n: int, *, length: int = 6, vocab_size: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples: source ``[BOS, w1..wL, EOS]`` and labels ``[wL..w1, EOS]`` (int64)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(FIRST_WORD, vocab_size, size=(n, length))
    src = np.concatenate([np.full((n, 1), BOS), words, np.full((n, 1), EOS)], axis=1)
    tgt = np.concatenate([words[:, ::-1], np.full((n, 1), EOS)], axis=1)
    return src.astype(np.int64), tgt.astype(np.int64)
