"""Transformers' Seq2SeqTrainer with encdec's PyTorch EncoderDecoderModel (issue 15): train, checkpoints, resume,
gradient accumulation, evaluate / predict with generate, save_model, reload in encdec and in Transformers.

The stock ``transformers.Seq2SeqTrainer`` does everything but write ``config.json`` (it does that only for
its own model classes); ``encdec_pt.integrations.Seq2SeqTrainer`` is the stock class saving complete
checkpoints. Tiny bert2gpt2 fixture, a few steps each.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encdec_pt import EncoderDecoderModel
from tests.conftest import FIXTURES
from tests.tolerances import ATOL, GRAD_ATOL, assert_close, max_abs_diff

transformers = pytest.importorskip("transformers", reason="Trainer tests need Transformers installed")
pytest.importorskip("accelerate", reason="Transformers' Trainer needs accelerate")

PAIR = FIXTURES / "bert2gpt2" / "pt"
PAD = 0  # the fixture's pad_token_id


def dataset(n: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Fixed-length rows; source pads and trailing -100 labels vary per row (so token counts differ)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids, labels = torch.randint(3, 78, (9,), generator=g), torch.randint(3, 78, (6,), generator=g)
        mask = torch.ones(9, dtype=torch.long)
        ids[9 - i % 3 :], mask[9 - i % 3 :] = PAD, 0
        labels[6 - (i * 2) % 5 :] = -100  # 6, 4, 2, 5, 3 label tokens
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


def args(out, **over) -> transformers.Seq2SeqTrainingArguments:
    base = dict(
        output_dir=str(out),
        max_steps=2,
        save_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        seed=0,
        predict_with_generate=True,
        generation_max_length=8,
        disable_tqdm=True,
        logging_steps=1,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    base.update(over)
    return transformers.Seq2SeqTrainingArguments(**base)


def no_dropout_model() -> EncoderDecoderModel:
    from encdec_core import load_config

    config = load_config(PAIR)
    for part, names in (
        (config.encoder, ("hidden_dropout_prob", "attention_probs_dropout_prob")),
        (config.decoder, ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    ):
        for name in names:
            setattr(part, name, 0.0)
    return EncoderDecoderModel.from_pretrained(PAIR, config=config)


def params(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def assert_same_params(a: dict, b: dict, what: str, atol: float = ATOL["float32"]) -> None:
    assert a.keys() == b.keys(), what
    worst = max(max_abs_diff(a[k], b[k]) for k in a)
    assert worst <= atol, f"{what}: max abs diff {worst:.2e}"


def test_stock_trainer_trains_evaluates_predicts_saves_and_resumes(tmp_path):
    """transformers.Seq2SeqTrainer as it is: nothing in user code but the model's import."""
    model = EncoderDecoderModel.from_pretrained(PAIR)
    data = dataset()
    seen = {}

    def compute_metrics(pred):
        seen["ids"] = np.asarray(pred.predictions)
        return {"rows": float(len(pred.predictions))}

    trainer = transformers.Seq2SeqTrainer(
        model=model,
        args=args(tmp_path / "run", save_steps=2),
        train_dataset=data,
        eval_dataset=data[:4],
        compute_metrics=compute_metrics,
    )
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)
    trained = params(model)

    metrics = trainer.evaluate()
    model.eval()
    batch = {k: torch.stack([r[k] for r in data[:4]]) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        loss = model(**batch).loss
        ids = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_length=8)
    assert metrics["eval_rows"] == 4.0 and abs(metrics["eval_loss"] - float(loss)) <= ATOL["float32"]
    # predictions are generate()'s ids, padded (with pad_token_id) to the generation config's max_length
    np.testing.assert_array_equal(seen["ids"][:, : ids.shape[1]], ids.numpy())
    assert (seen["ids"][:, ids.shape[1] :] == PAD).all()
    pred = trainer.predict(data[4:8])
    assert pred.metrics["test_rows"] == 4.0 and np.asarray(pred.predictions).shape[0] == 4

    # the stock checkpoint: canonical weights (no tied duplicates) but no config.json (Transformers writes
    # it only for its own model classes): it loads with the config given
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert (ckpt / "model.safetensors").exists() and not (ckpt / "config.json").exists()
    reloaded = EncoderDecoderModel.from_pretrained(ckpt, config=model.config)
    assert_same_params(params(reloaded), trained, "stock checkpoint-2")

    # resume from it (optimizer, scheduler, RNG state): two more steps equal a 4-step run
    resumed = EncoderDecoderModel.from_pretrained(PAIR)
    trainer = transformers.Seq2SeqTrainer(
        model=resumed, args=args(tmp_path / "run", max_steps=4, save_steps=10), train_dataset=data
    )
    trainer.train(resume_from_checkpoint=str(ckpt))
    straight = EncoderDecoderModel.from_pretrained(PAIR)
    transformers.Seq2SeqTrainer(
        model=straight, args=args(tmp_path / "straight", max_steps=4, save_steps=10), train_dataset=data
    ).train()
    assert_same_params(params(resumed), params(straight), "resumed vs straight 4 steps")
    word = "encoder.embeddings.word_embeddings.weight"
    assert max_abs_diff(params(resumed)[word], trained[word]) > 0  # it did train further


def test_integration_trainer_writes_checkpoints_both_libraries_load(tmp_path):
    from encdec_pt.integrations import Seq2SeqTrainer

    model = EncoderDecoderModel.from_pretrained(PAIR)
    trainer = Seq2SeqTrainer(model=model, args=args(tmp_path / "run"), train_dataset=dataset())
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    model.eval()
    trained = params(model)
    for folder in (tmp_path / "run" / "checkpoint-1", tmp_path / "run" / "checkpoint-2", tmp_path / "final"):
        assert {"config.json", "generation_config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
        ours, report = EncoderDecoderModel.from_pretrained(folder, output_loading_info=True)
        assert not report.missing and not report.unexpected, folder.name
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").exists()
    assert_same_params(params(ours), trained, "final folder")
    assert_same_params(
        params(EncoderDecoderModel.from_pretrained(tmp_path / "run" / "checkpoint-2")), trained, "checkpoint-2"
    )

    theirs, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    batch = {k: torch.stack([r[k] for r in dataset(4, seed=1)]) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        assert_close(theirs(**batch).logits, model(**batch).logits, what="Transformers 5 on the Trainer's final save")
        assert_close(ours(**batch).logits, model(**batch).logits, what="encdec on the Trainer's final save")


def _one_step(tmp_path, name: str, batch_size: int, accumulation: int) -> dict[str, np.ndarray]:
    model = no_dropout_model()
    run = args(
        tmp_path / name,
        max_steps=1,
        save_steps=10,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
    )
    transformers.Seq2SeqTrainer(model=model, args=run, train_dataset=dataset(4)).train()
    return params(model)


def test_gradient_accumulation_gives_the_full_batch_update(tmp_path):
    """The loss is normalised over the label tokens of the whole accumulated batch (num_items_in_batch)."""
    start = params(no_dropout_model())
    full = _one_step(tmp_path, "full", 4, 1)
    for batch_size, accumulation in ((2, 2), (1, 4)):
        accumulated = _one_step(tmp_path, f"ga{accumulation}", batch_size, accumulation)
        assert_same_params(accumulated, full, f"{accumulation} x {batch_size} vs 1 x 4", GRAD_ATOL["float32"])

    # what a per-micro-batch mean would give (rows hold 6, 4, 2, 5 label tokens): measurably different
    model = no_dropout_model()
    rows = dataset(4)
    for pair in (rows[:2], rows[2:]):
        batch = {k: torch.stack([r[k] for r in pair]) for k in pair[0]}
        (model(**batch).loss / 2).backward()
    naive = {k: start[k] - p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    assert max(max_abs_diff(naive[k], full[k]) for k in naive) > 100 * GRAD_ATOL["float32"]


def test_generate_takes_what_seq2seq_trainer_passes():
    """Item 13: labels and synced_gpus go to generate(); the generation config answers what the Trainer reads."""
    model = EncoderDecoderModel.from_pretrained(PAIR).eval()
    rows = dataset(3)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        plain = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4)
        trainer_style = model.generate(**batch, synced_gpus=False, max_new_tokens=4)
    np.testing.assert_array_equal(trainer_style.numpy(), plain.numpy())

    gen = model.generation_config
    assert gen._from_model_config is True  # generation_config.json says so (written from the model config)
    gen._from_model_config = False
    assert gen._from_model_config is False and gen.to_dict()["_from_model_config"] is False
    defaults = gen._get_default_generation_params()
    assert defaults["max_length"] == 20 and defaults["num_beams"] == 1
    gen.max_new_tokens = None
    unused = gen.update(**{**defaults, "max_new_tokens": 5, "typical_p": 1.0}, defaults_only=True)
    # HF's in-place form: only unset (None) fields take the value; names not used come back
    assert gen.max_new_tokens == 5 and gen.max_length == 20 and "typical_p" in unused and "max_length" in unused
