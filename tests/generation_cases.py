"""Hand-made processor cases shared by the three backends' generation tests.

Each case: generation settings, the decoder ids so far (2 rows), one step's scores over a
vocabulary of 7, and the processed scores worked out by hand (``-inf`` = banned). The eos
id is 6 unless a case says otherwise; the decoder prompt is the start token alone.
"""

from __future__ import annotations

import numpy as np

INF = float("-inf")
BASE = [[0.5, 1.0, -1.0, 2.0, -2.0, 0.0, 3.0], [0.5, 1.0, -1.0, 2.0, -2.0, 0.0, 3.0]]

CASES = [
    # a seen token: positive score / 2, negative score * 2
    dict(
        name="repetition_penalty",
        settings=dict(repetition_penalty=2.0),
        ids=[[0, 1, 3], [0, 2, 4]],
        expected=[[0.25, 0.5, -1.0, 1.0, -2.0, 0.0, 3.0], [0.25, 1.0, -2.0, 2.0, -4.0, 0.0, 3.0]],
    ),
    # bigram (1, 3) was seen and the row ends in 1: 3 is banned; row 1 ends in 5, (5, x) never seen
    dict(
        name="no_repeat_bigram",
        settings=dict(no_repeat_ngram_size=2),
        ids=[[1, 3, 1], [2, 2, 5]],
        expected=[[0.5, 1.0, -1.0, INF, -2.0, 0.0, 3.0], BASE[1]],
    ),
    # trigram (1, 2, 1) seen and the row ends in (1, 2): 1 is banned; (2, 2) -> 3 and -> 4 seen in row 1
    dict(
        name="no_repeat_trigram",
        settings=dict(no_repeat_ngram_size=3),
        ids=[[0, 1, 2, 1, 2], [2, 2, 3, 2, 2]],
        expected=[[0.5, INF, -1.0, 2.0, -2.0, 0.0, 3.0], [0.5, 1.0, -1.0, INF, -2.0, 0.0, 3.0]],
    ),
    # [4] always banned, [1, 5] after a 1, [6] is the eos alone: dropped so eos stays reachable
    dict(
        name="bad_words",
        settings=dict(bad_words_ids=[[4], [1, 5], [6]]),
        ids=[[0, 1], [0, 2]],
        expected=[[0.5, 1.0, -1.0, 2.0, INF, INF, 3.0], [0.5, 1.0, -1.0, 2.0, INF, 0.0, 3.0]],
    ),
    # length 3 < min_length 4: eos banned
    dict(
        name="min_length",
        settings=dict(min_length=4),
        ids=[[0, 1, 2], [0, 3, 3]],
        expected=[[0.5, 1.0, -1.0, 2.0, -2.0, 0.0, INF], [0.5, 1.0, -1.0, 2.0, -2.0, 0.0, INF]],
    ),
    dict(name="min_length_reached", settings=dict(min_length=4), ids=[[0, 1, 2, 3], [0, 3, 3, 3]], expected=BASE),
    # 2 new tokens < min_new_tokens 3 (prompt = start token)
    dict(
        name="min_new_tokens",
        settings=dict(min_new_tokens=3),
        ids=[[0, 1, 2], [0, 3, 3]],
        expected=[[0.5, 1.0, -1.0, 2.0, -2.0, 0.0, INF], [0.5, 1.0, -1.0, 2.0, -2.0, 0.0, INF]],
    ),
    # several eos ids: all banned
    dict(
        name="min_length_eos_list",
        settings=dict(min_length=5, eos_token_id=[6, 3]),
        ids=[[0, 1], [0, 2]],
        expected=[[0.5, 1.0, -1.0, INF, -2.0, 0.0, INF], [0.5, 1.0, -1.0, INF, -2.0, 0.0, INF]],
    ),
    dict(
        name="forced_bos",
        settings=dict(forced_bos_token_id=4),
        ids=[[0], [0]],
        expected=[[INF, INF, INF, INF, 0.0, INF, INF], [INF, INF, INF, INF, 0.0, INF, INF]],
    ),
    dict(name="forced_bos_later", settings=dict(forced_bos_token_id=4), ids=[[0, 1], [0, 1]], expected=BASE),
    # max_length 4: at length 3 only eos
    dict(
        name="forced_eos",
        settings=dict(forced_eos_token_id=6, max_length=4),
        ids=[[0, 1, 2], [0, 2, 2]],
        expected=[[INF, INF, INF, INF, INF, INF, 0.0], [INF, INF, INF, INF, INF, INF, 0.0]],
    ),
    dict(
        name="temperature",
        settings=dict(do_sample=True, temperature=0.5, top_k=0),
        ids=[[0], [0]],
        expected=[[1.0, 2.0, -2.0, 4.0, -4.0, 0.0, 6.0]] * 2,
    ),
    dict(
        name="top_k",
        settings=dict(do_sample=True, top_k=2),
        ids=[[0], [0]],
        expected=[[INF, INF, INF, 2.0, INF, INF, 3.0]] * 2,
    ),
    # softmax of (3, 2, 1, 0.5, ...): the best three hold > 0.9 of the mass, the best two < 0.9
    dict(
        name="top_p",
        settings=dict(do_sample=True, top_k=0, top_p=0.9),
        ids=[[0], [0]],
        expected=[[INF, 1.0, INF, 2.0, INF, INF, 3.0]] * 2,
    ),
    # temperature first, then top-k on the scaled scores
    dict(
        name="warpers_chain",
        settings=dict(do_sample=True, temperature=2.0, top_k=3),
        ids=[[0], [0]],
        expected=[[INF, 0.5, INF, 1.0, INF, INF, 1.5]] * 2,
    ),
]


# generate() settings every backend refuses, with a word the error must contain
BAD_SETTINGS = [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=0.0), "temperature"),
    (dict(max_new_tokenz=3), "max_new_tokenz"),
    (dict(eos_token_id=500), "eos_token_id=500"),
    (dict(bad_words_ids=[[]]), "bad_words_ids"),
    (dict(max_length=1), "max_length"),
]


def case_arrays(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (2, T) int64, scores (2, 7) float32, expected (2, 7) float32)."""
    ids = np.array(case["ids"], dtype=np.int64)
    return ids, np.array(BASE, dtype=np.float32), np.array(case["expected"], dtype=np.float32)


def case_config(case: dict) -> dict:
    """Generation settings of a case: eos 6, start 0, pad 0 unless the case says otherwise."""
    return {"eos_token_id": 6, "decoder_start_token_id": 0, "pad_token_id": 0, **case["settings"]}


def assert_same_ids(out, run: dict, pad: int, what: str) -> None:
    """Generated ids equal the reference run's; for beam search, equal up to each hypothesis' end, then our pad.

    Transformers 4.57 fills a beam hypothesis that ended early with EOS instead of the pad id
    when the pad id is 0 (it tests the id for truthiness); encdec pads (encdec_core.generation).
    ``out`` is any backend's GenerateOutput (torch, TF or JAX arrays).
    """
    ours, ref = np.asarray(out.sequences).tolist(), run["sequences"]
    if out.beam_indices is None:
        assert ours == ref, what
        return
    beam_indices = np.asarray(out.beam_indices)
    assert len(ours) == len(ref) and len(ours[0]) == len(ref[0]), what
    prompt = len(ours[0]) - beam_indices.shape[1]
    for row, theirs, n in zip(ours, ref, (beam_indices != -1).sum(1).tolist()):
        assert row[: prompt + n] == theirs[: prompt + n], what
        assert all(t == pad for t in row[prompt + n :]), f"{what}: not padded after the hypothesis"
        assert len(set(theirs[prompt + n :])) <= 1, what
