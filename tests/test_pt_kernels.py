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
    """Measured: with fewer than MIN_ROWS rows F.linear streams at bandwidth; packing pays only after PACK_AFTER calls."""
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
