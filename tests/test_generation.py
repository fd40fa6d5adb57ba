"""Generation behaviour the three backends share, in one harness parametrised by backend.

Transformers 4.57's ids on every reference fixture, the decoding contract (``encode`` / ``init_cache`` / ``decode_step`` over the core's
``DecoderCache``), the processors on hand-made scores (``(ids (N,L) buffer, cur, scores)``:
positions from ``cur`` on are junk and must not count), and the settings refused at the call.
What each backend does its own way (Transformers' ids per fixture, compile counts, seeds,
export) stays in ``test_{pt,tf,flax}_generation.py``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import FIXTURES, PAIRS, generations
from generation_cases import BAD_SETTINGS, CASES, assert_same_ids, case_arrays, case_config
from tolerances import ATOL, assert_close

from encdec_core.decoding import DecoderCache, LayerCache, run_processors
from encdec_core.errors import ConfigError, GenerationError
from encdec_core.generation import GenerationConfig, resolve

BACKENDS = ["pt", "tf", "flax"]
ARCHITECTURES = ["bert2bert", "roberta2roberta", "bert2gpt2", "bert2gpt2_proj"]  # one pair per decoder kind
BEAM_VARIANTS = {"beam3_never", "beam3_false", "beam2_lp3_never", "beam2_lp3_false"}
_MODELS: dict[tuple[str, str], object] = {}


def gen_compile() -> dict:
    """Flax: FAST_COMPILE without XLA:CPU's fusion emitters, which halve again the compile time of a
    generation loop here; the ids and scores are asserted, so a numeric change could not hide."""
    from tests.test_flax_reference import FAST_COMPILE

    return {"compiler_options": FAST_COMPILE["compiler_options"] | {"xla_cpu_use_fusion_emitters": False}}


def fresh(backend: str, pair: str = "bert2bert"):
    if backend == "pt":
        from encdec_pt import EncoderDecoderModel as cls
    elif backend == "tf":
        from encdec_tf import TFEncoderDecoderModel as cls
    else:
        from encdec_flax import FlaxEncoderDecoderModel as cls
    model = cls.from_pretrained(FIXTURES / pair / "pt")
    if backend == "flax":
        model.jit_options = gen_compile()
    return model


def model_for(backend: str, pair: str = "bert2bert"):
    """One model per backend and pair for the file (a test that changes one uses :func:`fresh`)."""
    if (backend, pair) not in _MODELS:
        _MODELS[backend, pair] = fresh(backend, pair)
    return _MODELS[backend, pair]


def tensor(backend: str, x: np.ndarray):
    if backend == "pt":
        import torch

        return torch.from_numpy(np.asarray(x))
    if backend == "tf":
        import tensorflow as tf

        x = np.asarray(x)
        return tf.constant(x.astype(np.int32) if x.dtype == np.int64 else x)  # TF's ids are int32
    return np.asarray(x)


def no_grad(backend: str):
    if backend == "pt":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def batch(backend: str, pair: str = "bert2bert"):
    g = generations(pair)
    return tensor(backend, np.asarray(g["input_ids"])), tensor(backend, np.asarray(g["attention_mask"]))


def run_kwargs(backend: str, run: dict) -> dict:
    """A fixture run's generate() settings, its decoder prompt as the backend's tensor."""
    kw = dict(run["kwargs"])
    if "decoder_input_ids" in kw:
        kw["decoder_input_ids"] = tensor(backend, np.asarray(kw["decoder_input_ids"]))
    return kw


def reference_runs(backend: str) -> list[tuple[str, str, str]]:
    """(backend, pair, run) of every fixture run; sampled ids match only torch's generator, so PyTorch alone
    runs them (the others test sampling for reproducibility); TF runs the beam variants once per decoder kind."""
    runs = generations(PAIRS[0])["runs"]
    names = sorted(n for n, r in runs.items() if backend == "pt" or not r["kwargs"].get("do_sample"))
    return [
        (backend, p, n) for p in PAIRS for n in names if backend != "tf" or p in ARCHITECTURES or n not in BEAM_VARIANTS
    ]


def processed(backend: str, plan, ids: np.ndarray, cur: int, scores: np.ndarray) -> np.ndarray:
    """The plan's processors in ``backend`` on one step: ids (N, L) buffer of which ``cur`` columns are real."""
    if backend == "pt":
        from encdec_core.decoding import build_processors, processor_specs
        from encdec_pt.generation import PROCESSORS

        procs = build_processors(processor_specs(plan), PROCESSORS)
        return run_processors(procs, tensor(backend, ids), cur, tensor(backend, scores)).numpy()
    if backend == "tf":
        from encdec_tf.processors import tf_processors

        return run_processors(tf_processors(plan), tensor(backend, ids), cur, tensor(backend, scores)).numpy()
    import jax

    from encdec_flax.processors import flax_processors, split_plan

    static, values = split_plan(plan, vocab=scores.shape[-1])
    run = jax.jit(lambda v, i, n, s: run_processors(flax_processors(static, v), i, n, s), **gen_compile())
    return np.asarray(run(values, ids, cur, scores))  # cur traced, as in the loop


# ------------------------------------------------------------------------------- reference ids
@pytest.mark.parametrize("backend,pair,run_name", [c for b in BACKENDS for c in reference_runs(b)])
def test_ids_match_transformers(backend, pair, run_name):
    model, (ids, mask) = model_for(backend, pair), batch(backend, pair)
    run = generations(pair)["runs"][run_name]
    if "torch_manual_seed" in run:  # Transformers drew from the global generator after this seed
        import torch

        torch.manual_seed(run["torch_manual_seed"])
    # scores too (Flax: runs that differ only in values then share one compiled loop), but in TF, whose
    # compile-count test reuses these compiled programs
    flags = {"return_dict_in_generate": True, "output_scores": backend != "tf"}
    out = model.generate(ids, attention_mask=mask, **(run_kwargs(backend, run) | flags))
    if backend == "tf":
        assert out.sequences.dtype.name == "int32"
    assert_same_ids(out, run, model.config.pad_token_id, f"{backend} {pair}/{run_name}")
    if "sequences_scores" in run:
        assert_close(out.sequences_scores, np.array(run["sequences_scores"]), what=f"{backend} {pair} sequences_scores")


# ------------------------------------------------------------------------------- processors
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_processor_on_hand_made_scores(backend, case):
    ids, scores, expected = case_arrays(case)
    plan = resolve(GenerationConfig(**case_config(case)), prompt_length=1, vocab_size=7)
    buffer = np.concatenate([ids, np.tile(np.arange(7), (2, 1))], 1)  # every token after cur: it must not count
    out = processed(backend, plan, buffer, ids.shape[1], scores)
    assert np.array_equal(np.isinf(out), np.isinf(expected)), f"{case['name']}: banned {np.isinf(out)}"
    finite = ~np.isinf(expected)
    assert np.abs(out[finite] - expected[finite]).max() <= ATOL["float32"], case["name"]


# ------------------------------------------------------------------------------- the decoding contract
@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_contract_token_by_token_equals_the_full_forward(backend):
    """encode -> init_cache for g rows per source -> decode_step token by token: each step's logits are the
    full forward's on a tiled source; the cache is the core's, its cross keys/values kept once per source."""
    pair, g = "bert2gpt2_proj", 2  # the projection runs in init_cache
    model, (ids, mask) = model_for(backend, pair), batch(backend, pair)
    source = {
        k: np.repeat(np.asarray(v), g, 0) for k, v in generations(pair).items() if k in ("input_ids", "attention_mask")
    }
    b = len(source["input_ids"]) // g
    dec = np.random.default_rng(0).integers(3, 99, (b * g, 5)).astype(np.int64 if backend == "pt" else np.int32)
    with no_grad(backend):
        full = np.asarray(
            model(**{k: tensor(backend, v) for k, v in source.items()}, decoder_input_ids=tensor(backend, dec)).logits
        )  # (N, T, V) on tiled sources
        cache = model.init_cache(b * g, dec.shape[1], model.encode(ids, mask), mask)
        cached = []
        for t in range(dec.shape[1]):
            logits, cache = model.decode_step(tensor(backend, dec[:, t : t + 1]), cache)
            cached.append(np.asarray(logits))
    assert isinstance(cache, DecoderCache) and isinstance(cache.layers[0], LayerCache)
    assert int(cache.index) == dec.shape[1]
    layer = cache.layers[0]
    assert layer.key.shape[0] == b * g and layer.cross_key.shape[0] == b  # shared by a source's rows, not tiled
    assert_close(np.concatenate(cached, 1), full, what=f"{backend} {pair} token by token")


# ------------------------------------------------------------------------------- settings refused at the call
@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_start_token_is_a_clear_error(backend):
    model = fresh(backend)
    model.set_generation_config(GenerationConfig())
    model.config.decoder_start_token_id = None
    model.config.bos_token_id = None
    with pytest.raises(GenerationError, match="decoder_start_token_id"):
        model.generate(*batch(backend))


@pytest.mark.parametrize("kwargs,match", BAD_SETTINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_settings_are_named(backend, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        model_for(backend).generate(*batch(backend), **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_strategy_in_a_loaded_config_is_refused(backend):
    gen = GenerationConfig.from_dict({"num_beam_groups": 2, "diversity_penalty": 0.5})
    with pytest.raises(GenerationError, match="num_beam_groups"):
        model_for(backend).generate(*batch(backend), generation_config=gen)


def test_generation_config_types_are_checked():
    with pytest.raises(ConfigError, match="num_beams"):
        GenerationConfig.from_dict({"num_beams": "4"})
