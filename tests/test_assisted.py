"""Assisted decoding (issue 17) in the three backends: prompt lookup and a draft model give greedy search's ids.

One harness parametrised by backend. The ids are compared with Transformers 4.57's greedy runs
of the fixtures (``generate.json``); the acceptance counts of prompt lookup with an independent
numpy model of the algorithm over those ids; scores, processors and the position limit with our
plain greedy search; bad settings with the errors that name them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import generations
from test_generation import batch, fresh, model_for, run_kwargs
from test_transformers_api import BACKENDS

from encdec_core.errors import GenerationError, InputError
from encdec_core.generation import GenerationConfig
from tests.tolerances import assert_close

PAIRS = ["bert2bert", "bert2bart"]  # bert2bart's source holds n-grams of its greedy ids: lookup keeps some
RUNS = ["greedy", "decoder_prompt"]
PROPOSERS = ["lookup", "self", "other"]  # prompt lookup; the model as its own draft (all kept); another model


def proposer_kwargs(backend: str, pair: str, proposer: str) -> dict:
    if proposer == "lookup":
        return {"prompt_lookup_num_tokens": 3}
    if proposer == "self":
        return {"assistant_model": model_for(backend, pair), "num_assistant_tokens": 4}
    return {"assistant_model": model_for(backend, "bert2gpt2"), "num_assistant_tokens": 2}


def lookup_counts(source, mask, seqs, prompt: int, k: int, ngram: int, eos, max_length: int) -> tuple[int, int, int]:
    """(decoder calls, candidates, kept) of prompt lookup over known greedy ids ``seqs`` (N, T), in numpy."""
    rows, length = seqs.shape
    calls = proposed = accepted = 0
    cur = prompt
    while cur < length:
        room = min(k, max_length - cur)
        live = [eos is None or eos not in seqs[r, prompt:cur] for r in range(rows)]
        if not any(live):
            break
        kept = []
        for r in range(rows):
            src = [int(t) for t, m in zip(source[r], mask[r]) if m]
            cand = src[:k]  # no match: the source's first tokens (a copy begins there)
            for n in range(ngram, 0, -1):
                tail = list(seqs[r, cur - n : cur]) if cur >= n else None
                hits = [i for i in range(len(src) - n) if tail is not None and src[i : i + n] == tail]
                if hits:
                    cand = src[hits[0] + n : hits[0] + n + k]
                    break
            right = 0
            while (
                cand is not None and right < min(room, length - cur, len(cand)) and cand[right] == seqs[r, cur + right]
            ):
                right += 1
            kept.append(right if live[r] else k)
        a = min(kept)
        calls, proposed, accepted = calls + 1, proposed + room, accepted + min(a, room)
        cur += min(a + 1, room)
    return calls, proposed, accepted


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("proposer", PROPOSERS)
def test_assisted_ids_equal_transformers_greedy(backend, pair, proposer):
    model, (ids, mask) = model_for(backend, pair), batch(backend, pair)
    for name in RUNS:
        run = generations(pair)["runs"][name]
        extra = proposer_kwargs(backend, pair, proposer)
        out = model.generate(
            ids, attention_mask=mask, return_dict_in_generate=True, **run_kwargs(backend, run), **extra
        )
        assert np.asarray(out.sequences).tolist() == run["sequences"], f"{backend} {pair}/{name} {proposer}"
        k = extra.get("prompt_lookup_num_tokens") or extra["num_assistant_tokens"]
        assert out.accepted_tokens <= out.candidate_tokens <= out.decoder_calls * k
        if proposer == "self":  # the draft is the model: every candidate is kept, K tokens per call
            assert out.accepted_tokens == out.candidate_tokens
            assert out.decoder_calls == -(-(len(run["sequences"][0]) - prompt_length(run)) // k)
        if proposer == "lookup":
            seqs, eos = np.asarray(run["sequences"]), model.generation_config.eos_token_id
            p = prompt_length(run)
            expect = lookup_counts(
                np.asarray(ids), np.asarray(mask), seqs, p, k, 2, eos, p + run["kwargs"]["max_new_tokens"]
            )
            assert (out.decoder_calls, out.candidate_tokens, out.accepted_tokens) == expect, f"{backend} {pair}/{name}"


def prompt_length(run: dict) -> int:
    """The decoder prompt's length: the start token, then the run's decoder_input_ids (which may begin with it)."""
    given = run["kwargs"].get("decoder_input_ids", [[]])[0]
    return len(given) + (0 if given[:1] == [run["sequences"][0][0]] else 1)


def test_prompt_lookup_keeps_candidates_on_a_fixture():
    """The counting model above is not vacuous: on bert2bart's greedy ids prompt lookup keeps some candidates."""
    g = generations("bert2bart")
    seqs, eos = np.asarray(g["runs"]["greedy"]["sequences"]), g["generation_config"]["eos_token_id"]
    calls, _, kept = lookup_counts(np.asarray(g["input_ids"]), np.asarray(g["attention_mask"]), seqs, 1, 3, 2, eos, 13)
    assert kept > 0 and calls < seqs.shape[1] - 1


SETTINGS = [
    {"max_new_tokens": 14, "repetition_penalty": 1.7, "no_repeat_ngram_size": 2},
    {"max_new_tokens": 12, "min_new_tokens": 9, "bad_words_ids": [[52], [41, 0]]},
    {"max_new_tokens": 10, "forced_bos_token_id": 7, "forced_eos_token_id": 13},
    {"max_new_tokens": 15, "eos_token_id": None},
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_assisted_scores_and_processors_equal_plain_greedy(backend):
    """Every processor sees the row as greedy search does: ids equal, and the scores of the rows still running."""
    model, (ids, mask) = model_for(backend, "bert2bart"), batch(backend, "bert2bart")
    for settings in SETTINGS:
        ref = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **settings)
        seqs, eos = np.asarray(ref.sequences), settings.get("eos_token_id", 13)
        for extra in ({"prompt_lookup_num_tokens": 4}, {"assistant_model": model, "num_assistant_tokens": 5}):
            out = model.generate(
                ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **settings, **extra
            )
            what = f"{backend} {settings} {list(extra)[0]}"
            assert np.asarray(out.sequences).tolist() == seqs.tolist(), what
            assert len(out.scores) == len(ref.scores), what
            for t, (ours, theirs) in enumerate(zip(out.scores, ref.scores)):
                live = [eos is None or eos not in seqs[r, 1 : 1 + t] for r in range(seqs.shape[0])]
                ours, theirs = np.asarray(ours)[live], np.asarray(theirs)[live]
                assert (np.isinf(ours) == np.isinf(theirs)).all(), what
                assert_close(np.where(np.isinf(ours), 0, ours), np.where(np.isinf(theirs), 0, theirs), what=what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_assisted_at_the_decoder_position_limit(backend):
    """max_length at the decoder's 40 positions: K is capped so no call embeds a position past them."""
    model, (ids, mask) = model_for(backend, "bert2bert"), batch(backend, "bert2bert")
    kw = {"max_length": 40, "eos_token_id": None, "return_dict_in_generate": True}
    ref = model.generate(ids, attention_mask=mask, **kw)
    out = model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=6, **kw)
    assert np.asarray(out.sequences).shape == (3, 40)
    assert np.asarray(out.sequences).tolist() == np.asarray(ref.sequences).tolist()
    assert out.candidate_tokens <= 2 * out.decoder_calls  # K = 40 - 40 + 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_assisted_bad_settings_name_what_is_wrong(backend):
    model, (ids, mask) = model_for(backend, "bert2bert"), batch(backend, "bert2bert")
    with pytest.raises(GenerationError, match="greedy search: got beam"):
        model.generate(ids, attention_mask=mask, num_beams=2, prompt_lookup_num_tokens=3)
    with pytest.raises(GenerationError, match="greedy search: got sample"):
        model.generate(ids, attention_mask=mask, do_sample=True, assistant_model=model)
    with pytest.raises(GenerationError, match="not both"):
        model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, assistant_model=model)
    with pytest.raises(GenerationError, match="prompt_lookup_num_tokens must be >= 1, got 0"):
        model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=0)
    with pytest.raises(GenerationError, match="max_matching_ngram_size must be >= 1"):
        model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=2, max_matching_ngram_size=0)
    with pytest.raises(GenerationError, match="assistant_model expected a composed model"):
        model.generate(ids, attention_mask=mask, assistant_model="tiny-draft")
    with pytest.raises(GenerationError, match="vocab_size=98, the model's has 99"):
        model.generate(ids, attention_mask=mask, assistant_model=_other_vocab(backend))
    encoded = model.encode(ids, mask)
    with pytest.raises(InputError, match="needs input_ids"):
        model.generate(encoder_outputs=encoded, attention_mask=mask, prompt_lookup_num_tokens=2)


def _other_vocab(backend: str):
    """A composed model whose decoder has 98 tokens (the fixture's config, one token fewer)."""
    model = fresh(backend, "bert2bert")
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.decoder.vocab_size = 98
    return type(model)(config)


def test_assisted_pt_compile_and_tf_export_are_refused(tmp_path):
    model, (ids, mask) = model_for("pt", "bert2bert"), batch("pt", "bert2bert")
    with pytest.raises(InputError, match="compile=True does not run assisted decoding"):
        model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, compile=True)
    with pytest.raises(InputError, match="assisted decoding .* is not exported"):
        model_for("tf", "bert2bert").export_generate(tmp_path / "served", prompt_lookup_num_tokens=3)


def test_assisted_tf_compiles_once_per_shape():
    """TF's assisted loop is one XLA program: a second call of the same shapes and settings does not retrace."""
    from encdec_tf.generation import _compiled

    model = fresh("tf", "bert2bert")
    ids, mask = batch("tf", "bert2bert")
    first = model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, max_new_tokens=8)
    traces = _compiled(model).traces
    again = model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, max_new_tokens=8)
    assert _compiled(model).traces == traces == 1
    assert np.asarray(first).tolist() == np.asarray(again).tolist()
    model.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=4, max_new_tokens=8)  # K is static
    assert _compiled(model).traces == 2


def test_assisted_settings_round_trip_as_transformers_writes_them(tmp_path):
    """HF's keys: written only when set; Transformers' generation_config.json with them loads."""
    assert "num_assistant_tokens" not in GenerationConfig().to_dict()
    gen = GenerationConfig(prompt_lookup_num_tokens=5, max_matching_ngram_size=3, num_assistant_tokens=7)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps(gen.to_dict()))
    again = GenerationConfig.from_json_file(path)
    assert (again.prompt_lookup_num_tokens, again.max_matching_ngram_size, again.num_assistant_tokens) == (5, 3, 7)
