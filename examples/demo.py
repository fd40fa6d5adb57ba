"""The encdec demo: warm-start a tiny bert2gpt2, fine-tune it in PyTorch, continue in TensorFlow and Flax.

Runs offline in a few minutes on 2 CPU cores:

1. write two small "pretrained" checkpoints locally (a BERT encoder, a GPT-2 LM);
2. warm-start a bert2gpt2 with ``EncoderDecoderModel.from_encoder_decoder_pretrained``
   (its loading report lists the new cross-attention weights);
3. fine-tune on a synthetic task (reverse a sequence of words) and print the loss falling;
4. report teacher-forced accuracy on held-out examples;
5. save, reload, and show that the reloaded model computes identical outputs;
6. generate with the fine-tuned model (greedy and beam search) and score exact match;
7. load the same checkpoint in TensorFlow (Keras 3) and Flax and generate: the same ids;
8. run the parity checker (PyTorch, TensorFlow, Flax: every layer, greedy and beam ids);
9. write a report folder: the loss curve, a cross-attention heatmap, the parity table.

Usage: ``python examples/demo.py [--steps 300] [--out demo_out] [--threads 1]``
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from encdec_core import BertConfig, GPT2Config
from encdec_core.toy import BOS, EOS, PAD, reverse_task
from encdec_pt import BertModel, EncoderDecoderModel, GPT2LMHeadModel

VOCAB, LENGTH = 32, 6


def write_pretrained_parts(out: Path) -> tuple[Path, Path]:
    """Stand-ins for downloaded checkpoints: a BERT encoder and a GPT-2 LM, randomly initialised."""
    enc = BertModel.from_config(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=128, max_position_embeddings=32))
    dec = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                                                 n_positions=32, bos_token_id=BOS, eos_token_id=EOS))
    enc.save_pretrained(out / "bert-tiny")
    dec.save_pretrained(out / "gpt2-tiny")
    return out / "bert-tiny", out / "gpt2-tiny"


def train(model: EncoderDecoderModel, steps: int) -> list[float]:
    """AdamW with a short warm-up on random batches of the reverse task; returns every step's loss."""
    src, tgt = map(torch.from_numpy, reverse_task(4096, length=LENGTH, vocab_size=VOCAB, seed=1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="    training", unit="step")
    for _ in bar:
        i = torch.randint(0, len(src), (64,))
        loss = model(input_ids=src[i], labels=tgt[i]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def exact_match(ids: np.ndarray, target: np.ndarray) -> float:
    """Generated = start token, the reversed words, EOS: compare positions 1..LENGTH+1 with the labels."""
    return float((np.asarray(ids)[:, 1:LENGTH + 2] == target).all(-1).mean())


def continue_elsewhere(folder: Path, src: np.ndarray, target: np.ndarray, pt_greedy: np.ndarray,
                       pt_beam: np.ndarray) -> dict[str, str]:
    """Load the PyTorch checkpoint in TensorFlow and Flax and generate: the ids must be PyTorch's."""
    results = {}
    steps = [("TensorFlow (Keras 3, XLA)", "encdec_tf", "TFEncoderDecoderModel"),
             ("Flax (jax.jit)", "encdec_flax", "FlaxEncoderDecoderModel")]
    for name, module, cls_name in tqdm(steps, desc="    frameworks", unit="fw"):
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError as e:
            results[name] = f"skipped ({module} needs its framework: {e})"
            continue
        t0 = time.time()
        model = cls.from_pretrained(folder)  # the same canonical checkpoint: no conversion, no from_pt
        greedy = np.asarray(model.generate(src, max_new_tokens=LENGTH + 1))
        beam = np.asarray(model.generate(src, max_new_tokens=LENGTH + 1, num_beams=4))
        same = np.array_equal(greedy, pt_greedy) and np.array_equal(beam, pt_beam)
        results[name] = (f"greedy and beam-4 ids {'identical to' if same else 'DIFFERENT from'} PyTorch's, "
                         f"greedy exact match {exact_match(greedy, target):.3f} ({time.time() - t0:.1f}s with compilation)")
        if not same:
            raise SystemExit(f"{name} generated other ids than PyTorch")
    return results


def plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(losses)), losses, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (log scale)")
    ax.set_title("bert2gpt2 fine-tuning on 'reverse 6 words'")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cross_attention(model: EncoderDecoderModel, src: torch.Tensor, tgt: torch.Tensor, path: Path) -> None:
    """Every decoder layer's and head's cross-attention probabilities for one example (output_attentions=True)."""
    import matplotlib.pyplot as plt

    with torch.no_grad():
        out = model(input_ids=src[None], labels=tgt[None], output_attentions=True)
    layers = [a[0].numpy() for a in out.cross_attentions]  # per layer: (heads, target T, source S)
    heads = layers[0].shape[0]
    fig, axes = plt.subplots(len(layers), heads, figsize=(2.2 * heads, 2.3 * len(layers)), squeeze=False)
    decoder_in = [BOS] + tgt[:-1].tolist()  # what the decoder reads at each position (labels shifted right)
    for li, probs in enumerate(layers):
        for h in range(heads):
            ax = axes[li][h]
            ax.imshow(probs[h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(src)), [str(t) for t in src.tolist()], fontsize=6, rotation=90)
            ax.set_yticks(range(len(decoder_in)), [str(t) for t in decoder_in], fontsize=6)
            ax.set_title(f"layer {li}, head {h}", fontsize=8)
    fig.supxlabel("source token (encoder)", fontsize=9)
    fig.supylabel("decoder input token", fontsize=9)
    fig.suptitle("cross-attention: the decoder reads the source backwards", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steady on a shared machine; tiny models gain little from more)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("absl", "jax", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    report = args.out / "report"
    report.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print("1. writing small pretrained checkpoints to", args.out)
    enc_dir, dec_dir = write_pretrained_parts(args.out)

    print("2. warm-starting bert2gpt2")
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(enc_dir, dec_dir)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = BOS, PAD, EOS
    print(f"    {model.num_parameters():,} parameters")

    print(f"3. fine-tuning for {args.steps} steps on 'reverse {LENGTH} words'")
    t0 = time.time()
    losses = train(model, args.steps)
    for step in sorted({*range(0, args.steps, max(1, args.steps // 6)), args.steps - 1}):
        print(f"    step {step:4d}  loss {losses[step]:.4f}")
    print(f"    {time.time() - t0:.1f}s")

    print("4. held-out examples (teacher-forced)")
    model.eval()
    test_src, test_tgt = map(torch.from_numpy, reverse_task(256, length=LENGTH, vocab_size=VOCAB, seed=123))
    with torch.no_grad():
        out = model(input_ids=test_src, labels=test_tgt)
    pred = out.logits.argmax(-1)
    token_acc = (pred == test_tgt).float().mean().item()
    exact = (pred == test_tgt).all(-1).float().mean().item()
    print(f"    loss {out.loss.item():.4f}, token accuracy {token_acc:.3f}, exact match {exact:.3f}")
    print("    source    ", test_src[0, 1:-1].tolist())
    print("    predicted ", pred[0, :-1].tolist())

    print("5. save, reload, compare")
    folder = args.out / "bert2gpt2-reverse"
    model.save_pretrained(folder)
    again = EncoderDecoderModel.from_pretrained(folder)
    with torch.no_grad():
        same = torch.equal(again(input_ids=test_src, labels=test_tgt).logits, out.logits)
    print(f"    reloaded model gives identical logits: {same}")
    if not same:
        raise SystemExit("reloaded model differs")

    print("6. generate (the decoder sees only its own output now)")
    t0 = time.time()
    greedy = again.generate(test_src, max_new_tokens=LENGTH + 1).numpy()
    beam = again.generate(test_src, max_new_tokens=LENGTH + 1, num_beams=4).numpy()
    elapsed = time.time() - t0
    scores = {name: exact_match(ids, test_tgt.numpy()) for name, ids in (("greedy", greedy), ("beam 4", beam))}
    for name, ids in (("greedy", greedy), ("beam 4", beam)):
        print(f"    {name:7s} exact match {scores[name]:.3f}   e.g. {ids[0, 1:].tolist()}")
    print(f"    target          {test_tgt[0].tolist()}   ({elapsed:.1f}s for both on {len(test_src)} rows)")

    print("7. continue in TensorFlow and Flax with the same checkpoint")
    elsewhere = continue_elsewhere(folder, test_src.numpy(), test_tgt.numpy(), greedy, beam)
    for name, result in elsewhere.items():
        print(f"    {name}: {result}")

    print("8. parity check: the same batch through PyTorch, TensorFlow and Flax, layer by layer")
    parity_table = "not run"
    try:
        from conversion.parity import check_parity

        plot = report / "parity.png" if _has_matplotlib() else None
        parity = check_parity(folder, plot=plot)
        parity_table = parity.table()
        (report / "parity.md").write_text(parity_table)
        worst = max((d.max_abs for c in parity.comparisons for d in c.diffs), default=float("nan"))
        print(f"    verdict {'PASS' if parity.passed else 'FAIL'}: largest difference {worst:.1e} "
              f"(tolerance {parity.tolerance:.0e}); " + "; ".join(
                  f"{c.framework}: " + ", ".join(f"{m} ids {v}" for m, v in c.generation.items())
                  for c in parity.comparisons))
        if parity.errors:
            print("    could not run:", parity.errors)
    except ImportError as e:
        print(f"    skipped: the parity checker is not available ({e})")

    print("9. report")
    if _has_matplotlib():
        plot_loss(losses, report / "loss_curve.png")
        plot_cross_attention(again, test_src[0], test_tgt[0], report / "cross_attention.png")
    else:
        print("    no plots: matplotlib is not installed (pip install 'encdec[plot]')")
    _write_summary(report, args, losses, token_acc, exact, scores, elsewhere, parity_table)
    for f in sorted(report.iterdir()):
        print(f"    {f}")
    print(f"done in {time.time() - t_start:.0f}s")


def _has_matplotlib() -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        return True
    except ImportError:
        return False


def _write_summary(report: Path, args, losses, token_acc, exact, scores, elsewhere, parity_table) -> None:
    lines = [
        "# encdec demo report", "",
        f"bert2gpt2 warm-started from tiny local BERT and GPT-2 checkpoints, fine-tuned for {args.steps} steps "
        f"in PyTorch on 'reverse {LENGTH} words' (vocabulary {VOCAB}).", "",
        f"- loss: {losses[0]:.3f} at the first step, {losses[-1]:.4f} at the last (`loss_curve.png`)",
        f"- held-out, teacher-forced: token accuracy {token_acc:.3f}, exact match {exact:.3f}",
        *(f"- generation ({name}): exact match {value:.3f}" for name, value in scores.items()),
        *(f"- {name}: {result}" for name, result in elsewhere.items()),
        "- cross-attention of one held-out example, every layer and head: `cross_attention.png`", "",
        "## Parity", "", parity_table,
    ]
    (report / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
