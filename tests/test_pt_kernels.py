"""The prepacked decode-step linear path (encdec_pt.kernels): engaged in generate, same ids, never stale."""

from __future__ import annotations

import functools

import pytest
import test_generation as harness
import torch
from conftest import generations
from generation_cases import assert_same_ids
from tolerances import assert_close

from encdec_pt import kernels

model_for = functools.partial(harness.model_for, "pt")
run_kwargs = functools.partial(harness.run_kwargs, "pt")
batch = functools.partial(harness.batch, "pt")


def generate(model, pair: str, run: dict, tiles: int = 2):
    """The fixture batch repeated ``tiles`` times: 6 rows, enough for the packed path (kernels.MIN_ROWS)."""
    ids, mask = batch(pair)
    kw = run_kwargs(run) | {"return_dict_in_generate": True}
    if "decoder_input_ids" in kw:
        kw["decoder_input_ids"] = kw["decoder_input_ids"].repeat(tiles, 1)
    return model.generate(ids.repeat(tiles, 1), attention_mask=mask.repeat(tiles, 1), **kw)


def tiled(run: dict, tiles: int = 2) -> dict:
    return {**run, "sequences": run["sequences"] * tiles}


@pytest.fixture
def packing_calls(monkeypatch):
    """Count the packed GEMMs, so a test knows the fast path really ran."""
    calls = []
    real = kernels._packed

    def spy(owner, weight, transposed):
        calls.append(owner)
        return real(owner, weight, transposed)

    monkeypatch.setattr(kernels, "_packed", spy)
    return calls


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2", "bert2gpt2_proj"])
@pytest.mark.parametrize("run_name", ["greedy", "beam3"])
def test_packed_generate_gives_transformers_ids_and_the_unpacked_ids(pair, run_name, packing_calls):
    model = model_for(pair)
    run = generations(pair)["runs"][run_name]
    out = generate(model, pair, run)
    assert packing_calls, "generate did not take the packed path"
    assert_same_ids(out, tiled(run), model.config.pad_token_id, f"{pair}/{run_name} packed")
    kernels.set_packed_linear(False)
    try:
        plain = generate(model, pair, run)
    finally:
        kernels.set_packed_linear(True)
    assert torch.equal(out.sequences, plain.sequences)


def test_copies_are_dropped_after_generate_and_weights_edited_through_data_are_seen(packing_calls):
    model = model_for("bert2gpt2")
    run = generations("bert2gpt2")["runs"]["greedy"]
    first = generate(model, "bert2gpt2", run)
    assert not any("_packed_weight" in m.__dict__ for m in model.modules())  # memory back after the call
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.data.mul_(-1.0)  # .data edits do not bump the version counter (as PEFT's merge)
    kernels.set_packed_linear(False)
    try:
        plain = generate(model, "bert2gpt2", run)
    finally:
        kernels.set_packed_linear(True)
    packed = generate(model, "bert2gpt2", run)
    assert torch.equal(packed.sequences, plain.sequences) and not torch.equal(packed.sequences, first.sequences)


def test_outside_generate_or_with_autograd_the_plain_kernel_runs(packing_calls):
    layer = kernels.Linear(37, 11)
    x = torch.randn(kernels.MIN_ROWS, 37)
    y = layer(x)  # no scope: F.linear
    with kernels.packed_weights():
        y_grad = layer(x)  # the weight needs a gradient: F.linear
        with torch.no_grad():
            y_packed = layer(x)
    assert len(packing_calls) == 1 and y_grad.requires_grad
    assert torch.equal(y, y_grad)
    assert_close(y_packed, y.detach(), what="packed linear")


def test_few_rows_and_short_generations_keep_the_plain_kernel(packing_calls):
    """Measured: packing does not pay below MIN_ROWS rows (they run weight-first) or before PACK_AFTER calls."""
    model = model_for("bert2gpt2")
    run = generations("bert2gpt2")["runs"]["greedy"]
    generate(model, "bert2gpt2", run, tiles=1)  # 3 rows
    assert not packing_calls
    ids, mask = batch("bert2gpt2")
    short = kernels.PACK_AFTER - 2  # one decoder call per new token
    model.generate(ids.repeat(2, 1), attention_mask=mask.repeat(2, 1), max_new_tokens=short, eos_token_id=None)
    assert not packing_calls
    model.generate(ids.repeat(2, 1), attention_mask=mask.repeat(2, 1), max_new_tokens=short + 4, eos_token_id=None)
    assert packing_calls


@pytest.mark.parametrize(
    ("settings", "first_packed"),
    [
        ({"eos_token_id": None}, 1),  # no EOS: every call is sure to run, so packing waits for nothing
        ({"min_new_tokens": kernels.PACK_AFTER}, 1),  # EOS banned for PACK_AFTER tokens: as sure
        ({"min_new_tokens": kernels.PACK_AFTER - 1}, kernels.PACK_AFTER),  # may stop early: wait
        ({}, kernels.PACK_AFTER),
    ],
)
def test_packing_starts_at_the_first_call_when_the_calls_are_sure(settings, first_packed, monkeypatch):
    model = model_for("bert2gpt2")
    ids, mask = batch("bert2gpt2")
    calls, first = [0], []
    real = kernels._packed

    def spy(owner, weight, transposed):
        first.append(calls[0])
        return real(owner, weight, transposed)

    monkeypatch.setattr(kernels, "_packed", spy)
    hook = model.decoder.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        eos = {"eos_token_id": model.config.decoder.vocab_size - 1}  # a token the tiny model may emit
        out = model.generate(ids.repeat(2, 1), attention_mask=mask.repeat(2, 1), max_new_tokens=12, **(eos | settings))
    finally:
        hook.remove()
    assert out.shape[1] - 1 >= kernels.PACK_AFTER  # the batch ran past PACK_AFTER calls (the EOS is rare)
    assert first and min(first) == first_packed


def test_a_serving_scope_packs_once_across_calls_and_repacks_an_updated_weight():
    """``with packed_weights():`` around many generate calls: one packing, and an in-place update is seen."""
    model = model_for("bert2gpt2")
    run = generations("bert2gpt2")["runs"]["greedy"]

    def copies() -> dict:
        return {
            name: m.__dict__["_packed_weight"][1] for name, m in model.named_modules() if "_packed_weight" in m.__dict__
        }

    with kernels.packed_weights():
        first = generate(model, "bert2gpt2", run)
        after_first = copies()
        again = generate(model, "bert2gpt2", run)
        after_again = copies()
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.mul_(-1.0)  # in place on the parameter: its version counter moves
        updated = generate(model, "bert2gpt2", run)
        after_update = copies()
    assert after_first and torch.equal(first.sequences, again.sequences)
    assert after_again.keys() == after_first.keys()
    assert all(after_again[k] is after_first[k] for k in after_first)  # the second call packed nothing
    decoder = [k for k in after_first if k.startswith("decoder.")]
    assert decoder and all(after_update[k] is not after_first[k] for k in decoder)  # every updated weight repacked
    assert not copies()  # dropped when the block ends
    kernels.set_packed_linear(False)
    try:
        plain = generate(model, "bert2gpt2", run)
    finally:
        kernels.set_packed_linear(True)
    assert torch.equal(updated.sequences, plain.sequences) and not torch.equal(updated.sequences, first.sequences)


@pytest.fixture
def weight_first_calls(monkeypatch):
    """Count the unpacked few-row GEMMs computed as W @ x.T."""
    calls = []
    real = kernels._weight_first

    def spy(x, weight, bias):
        calls.append(x.shape)
        return real(x, weight, bias)

    monkeypatch.setattr(kernels, "_weight_first", spy)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_few_row_calls_run_weight_first_and_match_the_plain_kernel(bias, weight_first_calls):
    layer = kernels.Linear(37, 11, bias=bias)
    with torch.no_grad():
        for shape in [(1, 37), (2, 37), (3, 1, 37), (2, 2, 37), (5, 37)]:
            x = torch.randn(shape)
            y = layer(x)
            assert y.shape == (*shape[:-1], 11) and y.is_contiguous()
            assert_close(y, torch.nn.functional.linear(x, layer.weight, layer.bias), what=f"weight-first {shape}")
    assert weight_first_calls == [(2, 37), (3, 1, 37), (2, 2, 37)]  # 2 to 4 rows only
    layer(torch.randn(3, 37))  # the weight needs a gradient: F.linear
    kernels.set_packed_linear(False)
    try:
        with torch.no_grad():
            layer(torch.randn(3, 37))  # the fast path is off
    finally:
        kernels.set_packed_linear(True)
    assert len(weight_first_calls) == 3


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2_proj"])
def test_few_row_generate_gives_transformers_ids_and_the_plain_ids(pair, weight_first_calls, packing_calls):
    model = model_for(pair)
    run = generations(pair)["runs"]["greedy"]
    out = generate(model, pair, run, tiles=1)  # 3 rows: below MIN_ROWS, so nothing is packed
    assert weight_first_calls and not packing_calls
    assert_same_ids(out, run, model.config.pad_token_id, f"{pair} weight-first")
    kernels.set_packed_linear(False)
    try:
        plain = generate(model, pair, run, tiles=1)
    finally:
        kernels.set_packed_linear(True)
    assert torch.equal(out.sequences, plain.sequences)
