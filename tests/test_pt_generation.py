"""PyTorch generation: Transformers 4.57 ids on every fixture, processors, cache, compile, config."""

from __future__ import annotations

import functools
import json

import pytest
import test_generation as harness
import torch
from conftest import FIXTURES, generations
from generation_cases import assert_same_ids
from tolerances import assert_close

from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfig
from encdec_pt import EncoderDecoderModel
from encdec_pt.layers import reorder_cache

model_for = functools.partial(harness.model_for, "pt")  # shared with the cross-backend harness
batch = functools.partial(harness.batch, "pt")
run_kwargs = functools.partial(harness.run_kwargs, "pt")


@pytest.mark.parametrize("pair", ["bert2gpt2", "roberta2roberta"])
def test_compiled_static_cache_gives_the_same_ids_and_compiles_once(pair):
    model, (ids, mask) = model_for(pair), batch(pair)
    for name in ("greedy", "beam3"):
        run = generations(pair)["runs"][name]
        kw = run_kwargs(run) | {"return_dict_in_generate": True}
        first = model.generate(ids, attention_mask=mask, compile="aot_eager", **kw)
        assert_same_ids(first, run, model.config.pad_token_id, f"{pair}/{name} compiled")
        with torch.compiler.set_stance("fail_on_recompile"):  # same shapes: no new graph
            again = model.generate(ids, attention_mask=mask, compile="aot_eager", **kw)
        assert torch.equal(first.sequences, again.sequences)


# ------------------------------------------------------------------------------- cache
@pytest.mark.parametrize("pair", ["bert2bert", "roberta2roberta", "bert2gpt2", "bert2gpt2_proj"])
@pytest.mark.parametrize("static", [False, True])
def test_cached_steps_equal_the_uncached_forward(pair, static):
    """Token by token through the cache == the full forward's last position, every step; beams share cross k/v."""
    model, (ids, mask) = model_for(pair), batch(pair)
    g = 2  # two decoder rows per source, as beams: cross keys/values are shared, not copied
    dec = torch.randint(3, 99, (ids.shape[0] * g, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.init_cache(dec.shape[0], dec.shape[1], model.encode(ids, mask), mask)
        if static:  # the compiled path's cache: a tensor index, every step attends to all slots
            cache = cache._replace(index=torch.zeros((), dtype=torch.long))
        for t in range(dec.shape[1]):
            logits, cache = model.decode_step(dec[:, t : t + 1], cache)
            cached = logits[:, -1]
            full = model(
                input_ids=ids.repeat_interleave(g, 0),
                attention_mask=mask.repeat_interleave(g, 0),
                decoder_input_ids=dec[:, : t + 1],
            ).logits[:, -1]
            assert_close(cached, full, what=f"{pair} step {t} (static={static})")


def test_reorder_follows_beams():
    model, (ids, mask) = model_for("bert2gpt2"), batch("bert2gpt2")
    dec = torch.randint(3, 99, (6, 4), generator=torch.Generator().manual_seed(1))
    perm = torch.tensor([1, 0, 3, 3, 5, 4])  # rows stay within their source (2 per source)
    with torch.no_grad():
        cache = model.init_cache(6, 5, model.encode(ids, mask), mask)
        _, cache = model.decode_step(dec[:, :3], cache)
        cache = reorder_cache(cache, perm)
        cached = model.decode_step(dec[perm, 3:4], cache)[0][:, -1]
        full = model(
            input_ids=ids.repeat_interleave(2, 0),
            attention_mask=mask.repeat_interleave(2, 0),
            decoder_input_ids=dec[perm],
        ).logits[:, -1]
    assert_close(cached, full, what="after reorder")


# ------------------------------------------------------------------------------- behaviour
def test_padded_row_generates_as_if_alone():
    model, (ids, mask) = model_for("bert2gpt2"), batch("bert2gpt2")
    together = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        alone = model.generate(ids[r : r + 1, :n], max_new_tokens=8, eos_token_id=None)
        assert together[r].tolist() == alone[0].tolist(), r


def test_attention_mask_is_inferred_from_padding_as_transformers():
    model, (ids, mask) = model_for("bert2bert"), batch("bert2bert")
    assert torch.equal(
        model.generate(ids, max_new_tokens=6), model.generate(ids, attention_mask=mask, max_new_tokens=6)
    )


def test_encoder_outputs_instead_of_input_ids():
    model, (ids, mask) = model_for("bert2gpt2_proj"), batch("bert2gpt2_proj")
    with torch.no_grad():
        enc = model.encoder(input_ids=ids, attention_mask=mask)
    for kw in ({}, {"num_beams": 3}):
        a = model.generate(ids, attention_mask=mask, max_new_tokens=6, **kw)
        b = model.generate(encoder_outputs=enc, attention_mask=mask, max_new_tokens=6, **kw)
        assert torch.equal(a, b)


def test_sampling_is_reproducible_with_a_seed_or_generator():
    model, (ids, mask) = model_for("bert2bert"), batch("bert2bert")
    kw = dict(do_sample=True, top_k=0, max_new_tokens=10, eos_token_id=None)
    a = model.generate(ids, attention_mask=mask, seed=5, **kw)
    b = model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(5), **kw)
    others = [model.generate(ids, attention_mask=mask, seed=s, **kw) for s in (6, 7)]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, o) for o in others)
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    assert torch.equal(
        model.generate(ids, attention_mask=mask, seed=1, do_sample=True, top_k=1, max_new_tokens=10, eos_token_id=None),
        greedy,
    )


def test_return_dict_fields():
    model, (ids, mask) = model_for("bert2gpt2"), batch("bert2gpt2")
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=5, eos_token_id=None, return_dict_in_generate=True, output_scores=True
    )
    assert out.sequences.shape == (3, 6) and len(out.scores) == 5 and out.scores[0].shape == (3, 99)
    assert torch.equal(torch.stack([s.argmax(-1) for s in out.scores], 1), out.sequences[:, 1:])
    beam = model.generate(
        ids,
        attention_mask=mask,
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=5,
        eos_token_id=None,
        return_dict_in_generate=True,
    )
    assert beam.sequences.shape == (6, 6) and beam.sequences_scores.shape == (6,) and beam.beam_indices.shape == (6, 5)
    assert beam.scores is None
    assert (beam.sequences_scores[0::2] >= beam.sequences_scores[1::2]).all()  # best first per source


def test_bare_call_returns_ids_and_respects_max_length():
    model, (ids, mask) = model_for("roberta2roberta"), batch("roberta2roberta")
    out = model.generate(ids, attention_mask=mask, eos_token_id=None)
    assert out.shape == (3, 20)  # Transformers' default max_length counts the start token
    assert model.generate(ids, attention_mask=mask, max_length=5, eos_token_id=None).shape == (3, 5)


# ------------------------------------------------------------------------------- config
def test_generation_config_round_trips_transformers_file():
    path = FIXTURES / "bert2gpt2" / "pt" / "generation_config.json"
    data = json.loads(path.read_text())
    gen = GenerationConfig.from_json_file(path)
    assert gen.to_dict() == data and gen.eos_token_id == 78 and gen.extra["transformers_version"]


def test_generation_config_saved_and_reloaded(tmp_path):
    model = harness.fresh("pt")
    model.generation_config = model.generation_config.update(max_new_tokens=4, num_beams=2)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 4 and saved["num_beams"] == 2 and saved["decoder_start_token_id"] == 2
    again = EncoderDecoderModel.from_pretrained(tmp_path / "m")
    ids, mask = batch("bert2bert")
    assert again.generate(ids, attention_mask=mask, eos_token_id=None).shape == (3, 5)


def test_tokens_set_on_model_config_after_construction_are_used():
    """The seed's workflow: build, then set model.config.decoder_start_token_id / pad_token_id."""
    model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt")
    model.set_generation_config(GenerationConfig.from_model_config(model.config))
    model.config.decoder_start_token_id = 7
    out = model.generate(*batch("bert2bert"), max_new_tokens=2)
    assert out[:, 0].tolist() == [7, 7, 7]


def test_bad_inputs_are_named():
    model = model_for("bert2bert")
    with pytest.raises(InputError, match="input_ids"):
        model.generate()
    with pytest.raises(InputError, match="decoder_input_ids"):
        model.generate(batch("bert2bert")[0], decoder_input_ids=torch.tensor([[2]]))
