"""PyTorch specifics of the issue-16 families: every fixture run, the cache and the compiled path per decoder family.

The cross-backend harness (tests/test_families.py) checks logits, four generate runs and warm
starts; here each new decoder family also runs all of its fixture's generate runs (sampling
included: torch's generator), decodes token by token through the eager and the static cache
(BERT's relative positions: a query row's position is the cache index plus its row), prefills a
multi-token prompt, and generates through ``torch.compile``.
"""

from __future__ import annotations

import functools

import pytest
import test_generation as harness
import torch
from conftest import FIXTURES, generations
from generation_cases import assert_same_ids
from tolerances import assert_close

from encdec_core import load_config
from encdec_core.errors import InputError
from encdec_core.registry import model_class

model_for = functools.partial(harness.model_for, "pt")
batch = functools.partial(harness.batch, "pt")
run_kwargs = functools.partial(harness.run_kwargs, "pt")

DECODER_PAIRS = ["xlmr2camembert", "bertgen2bertgen", "bertgen2bertgen_tied", "electra2electra"]
DECODER_PAIRS += ["bert2bart", "bert2mbart", "bertrel2bertrel"]
ALL_RUNS = [(p, r) for p in DECODER_PAIRS + ["distilbert2gpt2"] for r in generations(p)["runs"]]


@pytest.mark.parametrize("pair,run_name", ALL_RUNS)
def test_every_fixture_run_gives_transformers_ids(pair, run_name):
    model, (ids, mask) = model_for(pair), batch(pair)
    run = generations(pair)["runs"][run_name]
    if "torch_manual_seed" in run:  # Transformers drew from the global generator after this seed
        torch.manual_seed(run["torch_manual_seed"])
    out = model.generate(ids, attention_mask=mask, **(run_kwargs(run) | {"return_dict_in_generate": True}))
    assert_same_ids(out, run, model.config.pad_token_id, f"{pair}/{run_name}")


@pytest.mark.parametrize("pair", DECODER_PAIRS)
@pytest.mark.parametrize("static", [False, True])
def test_cached_steps_equal_the_uncached_forward(pair, static):
    """A 3-token prefill then token by token through the cache == the full forward, every step; beams share k/v."""
    model, (ids, mask) = model_for(pair), batch(pair)
    g = 2
    dec = torch.randint(3, 99, (ids.shape[0] * g, 8), generator=torch.Generator().manual_seed(0))
    src, src_mask = ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0)
    with torch.no_grad():
        cache = model.init_cache(dec.shape[0], dec.shape[1], model.encode(ids, mask), mask)
        if static:
            cache = cache._replace(index=torch.zeros((), dtype=torch.long))
        spans = [(0, 3)] + [(t, t + 1) for t in range(3, dec.shape[1])]
        for a, b in spans:
            logits, cache = model.decode_step(dec[:, a:b], cache)
            full = model(input_ids=src, attention_mask=src_mask, decoder_input_ids=dec[:, :b]).logits[:, a:b]
            assert_close(logits, full, what=f"{pair} positions {a}..{b - 1} (static={static})")


@pytest.mark.parametrize("pair", ["bertrel2bertrel", "bert2bart", "bert2mbart", "electra2electra"])
def test_compiled_static_cache_gives_the_same_ids(pair):
    model, (ids, mask) = model_for(pair), batch(pair)
    for name in ("greedy", "beam3"):
        run = generations(pair)["runs"][name]
        out = model.generate(
            ids, attention_mask=mask, compile="aot_eager", **(run_kwargs(run) | {"return_dict_in_generate": True})
        )
        assert_same_ids(out, run, model.config.pad_token_id, f"{pair}/{name} compiled")


@pytest.mark.parametrize("part", ["distilbert", "bertgen"])
def test_models_without_token_types_refuse_token_type_ids(part):
    folder = FIXTURES / "warm" / part
    model = model_class("pt", load_config(folder), "encoder").from_pretrained(folder)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InputError, match="token_type_ids"):
        model(ids, token_type_ids=torch.zeros_like(ids))


def test_electra_head_is_tied_to_the_narrow_embeddings():
    folder = FIXTURES / "warm" / "electra_lm"
    model = model_class("pt", load_config(folder), "decoder").from_pretrained(folder)
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert out.weight is emb.weight and emb.weight.shape == (model.config.vocab_size, model.config.embedding_size)
    assert model.electra.embeddings_project.in_features == model.config.embedding_size
