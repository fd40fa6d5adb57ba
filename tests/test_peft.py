"""PEFT LoRA (task_type SEQ_2_SEQ_LM) on encdec's PyTorch EncoderDecoderModel (issue 15), and
``prepare_inputs_for_generation`` (item 14), which PEFT's PeftModelForSeq2SeqLM wraps.

get_peft_model, a few training steps, generate, save and reload the adapter, merge_and_unload;
tiny bert2bert fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encdec_pt import EncoderDecoderModel
from tests.conftest import FIXTURES, expected
from tests.tolerances import assert_close, max_abs_diff

peft = pytest.importorskip("peft", reason="PEFT tests need peft installed")

PAIR = FIXTURES / "bert2bert" / "pt"


def batch() -> dict[str, torch.Tensor]:
    e = expected("bert2bert")
    return {k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")}


def lora_model():
    config = peft.LoraConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]
    )
    return peft.get_peft_model(EncoderDecoderModel.from_pretrained(PAIR), config)


def test_lora_trains_generates_saves_reloads_and_merges(tmp_path):
    torch.manual_seed(0)
    model = lora_model()
    assert isinstance(model, peft.PeftModelForSeq2SeqLM)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # query and value of every self- and cross-attention: 2 layers x (encoder + decoder self + decoder cross) x 2 x (A, B)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable) and len(trainable) == 2 * 3 * 2 * 2
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    data = batch()
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(4):
        optim.zero_grad()
        loss = model(**data).loss
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    model.eval()

    gen = dict(input_ids=data["input_ids"], attention_mask=data["attention_mask"], max_new_tokens=5)
    with torch.no_grad():
        logits = model(**data).logits
        ids = model.generate(**gen)
    assert ids.shape[0] == 3 and (ids[:, 0] == 2).all()  # decoder_start_token_id first

    model.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    reloaded = peft.PeftModel.from_pretrained(EncoderDecoderModel.from_pretrained(PAIR), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        assert_close(reloaded(**data).logits, logits, what="adapter reloaded on a fresh base")
        np.testing.assert_array_equal(reloaded.generate(**gen).numpy(), ids.numpy())

    merged = reloaded.merge_and_unload()
    assert type(merged) is EncoderDecoderModel and not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert_close(merged(**data).logits, logits, what="merged LoRA")
        np.testing.assert_array_equal(merged.generate(**gen).numpy(), ids.numpy())
        base = EncoderDecoderModel.from_pretrained(PAIR).eval()
        assert max_abs_diff(base(**data).logits, logits) > 1e-3  # the adapter changed the model
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert_close(
            EncoderDecoderModel.from_pretrained(tmp_path / "merged")(**data).logits,
            logits,
            what="merged model saved and reloaded",
        )


def test_prepare_inputs_for_generation_feeds_what_the_cache_lacks():
    model = EncoderDecoderModel.from_pretrained(PAIR).eval()
    data = batch()
    dec = torch.tensor([[2, 11, 12, 13], [2, 21, 22, 23], [2, 31, 32, 33]])
    with torch.no_grad():
        enc = model.get_encoder()(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
        full = model(encoder_outputs=enc, attention_mask=data["attention_mask"], decoder_input_ids=dec).logits
        first = model.prepare_inputs_for_generation(
            dec[:, :3], attention_mask=data["attention_mask"], encoder_outputs=enc, use_cache=True
        )
        assert first["decoder_input_ids"].shape == (3, 3) and first["encoder_outputs"] is enc
        out = model(**first)
        step = model.prepare_inputs_for_generation(
            dec,
            past_key_values=out.past_key_values,
            attention_mask=data["attention_mask"],
            encoder_outputs=enc,
            use_cache=True,
        )
        np.testing.assert_array_equal(step["decoder_input_ids"].numpy(), dec[:, 3:].numpy())  # only the new token
        assert_close(model(**step).logits[:, -1], full[:, -1], what="cached step from prepare_inputs_for_generation")
