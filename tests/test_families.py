"""Every encoder and decoder family beyond BERT / RoBERTa / GPT-2, in the three backends, against Transformers 4.57.

One harness parametrised by backend (issue 16): each family's fixture pair (``tests/fixtures/<pair>``,
written by ``make_fixtures.py --pairs``) loads from every folder Transformers wrote (PyTorch
safetensors and ``.bin``; ``tf_model.h5`` and ``flax_model.msgpack`` where 4.57 has the class) into
every backend, gives Transformers' loss and logits within the fp32 tolerance, generates its greedy
and beam ids, and warm-starts from the standalone parts with exactly the weights Transformers
reported as new. ``bertrel2bertrel`` (BERT's relative positions) is compared with Transformers'
``use_cache=False`` outputs: with its default cache object Transformers 4.57 puts every query row
of a multi-token decoder call at position key_length - 1 (``BertSelfAttention``), which we do not copy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAMILY_PAIRS, FIXTURES, compare_to_reference, expected, generations
from generation_cases import assert_same_ids
from test_generation import batch, model_for, run_kwargs
from test_transformers_api import BACKENDS, wrapper

FAMILIES = FAMILY_PAIRS  # one pair per family: XLM-R + CamemBERT, BertGeneration (and tied), ELECTRA, DistilBERT, BART, MBart, BERT relative
FORMATS = ["pt", "pt_bin", "tf", "flax"]
CASES = [(b, p, f) for b in BACKENDS for p in FAMILIES for f in FORMATS if (FIXTURES / p / f).is_dir()]
RUNS = ["greedy_no_eos", "beam3", "greedy", "decoder_prompt"]
RELATIVE_QUIRK = {"bertrel2bertrel"}  # compared with Transformers' use_cache=False outputs (module docstring)
WARM_COMBOS = [
    ("xlmr", "camembert_lm"),
    ("bertgen", "bertgen_lm"),
    ("bertgen", "bertgen"),
    ("distilbert", "gpt2"),
    ("bertrel", "bertrel_lm"),
    ("electra", "electra_lm"),
    ("bert", "bart_lm"),
    ("bert", "mbart_lm"),
]


def reference_runs(backend: str, pair: str):
    """Runs A (labels) and B (decoder inputs, every output) of the fixture batch in ``backend``."""
    e = expected(pair)
    if backend == "pt":
        from test_pt_reference import run_reference_batch
    elif backend == "tf":
        from test_tf_reference import run_reference_batch
    else:
        from test_flax_reference import run_reference_batch
    return e, run_reference_batch


@pytest.mark.parametrize("backend,pair,fmt", CASES, ids=[f"{b}-{p}-{f}" for b, p, f in CASES])
def test_logits_and_loss_match_transformers(backend, pair, fmt):
    model, report = wrapper(backend).from_pretrained(FIXTURES / pair / fmt, output_loading_info=True)
    assert report.ok and not report.expected_new, str(report)
    e, run = reference_runs(backend, pair)
    a, b = run(model, e)
    if pair in RELATIVE_QUIRK:
        e = {**e, **{k.replace("_no_cache", ""): v for k, v in e.items() if "_no_cache" in k}}
        compare_to_reference(a, b, e, f"{backend} {pair}/{fmt}", fields=("encoder_hidden_states", "encoder_attentions"))
    else:
        compare_to_reference(a, b, e, f"{backend} {pair}/{fmt}")


GEN_CASES = [(b, p, r) for b in BACKENDS for p in FAMILIES for r in RUNS if b == "pt" or r in RUNS[:2]]


@pytest.mark.parametrize("backend,pair,run_name", GEN_CASES)
def test_generated_ids_match_transformers(backend, pair, run_name):
    model, (ids, mask) = model_for(backend, pair), batch(backend, pair)
    run = generations(pair)["runs"][run_name]
    out = model.generate(ids, attention_mask=mask, **(run_kwargs(backend, run) | {"return_dict_in_generate": True}))
    assert_same_ids(out, run, model.config.pad_token_id, f"{backend} {pair}/{run_name}")


@pytest.mark.parametrize("pair", list(FAMILIES))
def test_generation_config_comes_from_the_decoder_as_transformers(pair):
    """Transformers derives the wrapper's generation config from the decoder's (BART's forced_eos_token_id=2)."""
    from encdec_core import load_config
    from encdec_core.generation import GenerationConfig

    derived = GenerationConfig.from_model_config(load_config(FIXTURES / pair / "pt"))
    saved = json.loads((FIXTURES / pair / "pt" / "generation_config.json").read_text())
    for key in ("forced_eos_token_id", "decoder_start_token_id", "pad_token_id"):
        assert getattr(derived, key) == saved.get(key), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("enc,dec", WARM_COMBOS)
def test_warm_start_reports_exactly_the_new_weights(backend, enc, dec):
    """from_encoder_decoder_pretrained lists as new what Transformers 4.57 initialised, and the encoder is unchanged."""
    warm = FIXTURES / "warm"
    combos = json.loads((warm / "expected_new.json").read_text())["combos"]
    ref = next(c for c in combos if c["encoder"] == enc and c["decoder"] == dec)
    model = wrapper(backend).from_encoder_decoder_pretrained(warm / enc, warm / dec)
    report = model.loading_report
    hf_new = {f"decoder.{k}" for k in ref["decoder_missing_keys_newly_initialised"]} - set(report.tied)
    assert set(report.expected_new) == hf_new | set(ref["wrapper_new_weights"])
    assert not report.missing and not report.mismatched
    unused = set(ref["decoder_unexpected_keys_unused"]) | set(ref["encoder_unexpected_keys_unused"])
    assert set(report.unexpected) == unused
    # the warm-started encoder computes what the standalone checkpoint computes
    from encdec_core import load_config
    from encdec_core.registry import model_class

    alone = model_class(backend, load_config(warm / enc), "encoder").from_pretrained(warm / enc)
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]], np.int64)
    np.testing.assert_array_equal(_states(backend, model.encode, ids), _states(backend, alone, ids))


def _states(backend, encoder, ids) -> np.ndarray:
    """The last hidden states of ``encoder`` (a part model, or a wrapper's ``encode``) on ``ids``."""
    if backend == "pt":
        import torch

        with torch.no_grad():
            return encoder(torch.from_numpy(ids)).last_hidden_state.numpy()
    return np.asarray(encoder(ids.astype(np.int32)).last_hidden_state)


def test_cli_inspects_and_converts_every_family(tmp_path):
    """``encdec inspect`` names each family's parts; ``encdec convert`` writes Transformers' TF / Flax formats of them."""
    import subprocess
    import sys

    for pair in FAMILIES:
        enc, dec = (
            json.loads((FIXTURES / pair / "pt" / "config.json").read_text())[s]["model_type"]
            for s in ("encoder", "decoder")
        )
        out = subprocess.run(
            [sys.executable, "-m", "conversion.cli", "inspect", str(FIXTURES / pair / "pt")],
            capture_output=True,
            text=True,
            cwd=FIXTURES.parents[1],
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["architecture"] == f"{enc}2{dec}" and info["kind"] == "encoder-decoder", info
        assert (
            info["expected_new"] == [] and "decoder" in info["parameters"]
        )  # a tied encoder stores nothing of its own
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "conversion.cli",
            "convert",
            str(FIXTURES / "bert2mbart" / "pt"),
            str(tmp_path / "h5"),
            "--to",
            "h5",
        ],
        capture_output=True,
        text=True,
        cwd=FIXTURES.parents[1],
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "h5" / "tf_model.h5").is_file()
