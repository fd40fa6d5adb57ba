"""The encdec demo: warm-start a tiny bert2gpt2, fine-tune it, save, reload, compare.

Runs offline in about a minute on 2 CPU cores:

1. write two small "pretrained" checkpoints locally (a BERT encoder, a GPT-2 LM);
2. warm-start a bert2gpt2 with ``EncoderDecoderModel.from_encoder_decoder_pretrained``
   (its loading report lists the new cross-attention weights);
3. fine-tune on a synthetic task (reverse a sequence of words) and print the loss falling;
4. report teacher-forced accuracy on held-out examples;
5. save, reload, and show that the reloaded model computes identical outputs;
6. generate with the fine-tuned model (greedy and beam search) and score exact match.

Usage: ``python examples/demo.py [--steps 300] [--out demo_out]``
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    print("1. writing small pretrained checkpoints to", args.out)
    enc_dir, dec_dir = write_pretrained_parts(args.out)

    print("2. warm-starting bert2gpt2")
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(enc_dir, dec_dir)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = BOS, PAD, EOS
    print(f"    {model.num_parameters():,} parameters")

    print(f"3. fine-tuning for {args.steps} steps on 'reverse {LENGTH} words'")
    src, tgt = map(torch.from_numpy, reverse_task(4096, length=LENGTH, vocab_size=VOCAB, seed=1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    model.train()
    t0, shown = time.time(), []
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for step in bar:
        i = torch.randint(0, len(src), (64,))
        loss = model(input_ids=src[i], labels=tgt[i]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % max(1, args.steps // 6) == 0 or step == args.steps - 1:
            shown.append((step, loss.item()))
    bar.close()
    for step, value in shown:
        print(f"    step {step:4d}  loss {value:.4f}")
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
    model.save_pretrained(args.out / "bert2gpt2-reverse")
    again = EncoderDecoderModel.from_pretrained(args.out / "bert2gpt2-reverse")
    with torch.no_grad():
        same = torch.equal(again(input_ids=test_src, labels=test_tgt).logits, out.logits)
    print(f"    reloaded model gives identical logits: {same}")
    if not same:
        raise SystemExit("reloaded model differs")

    print("6. generate (the decoder sees only its own output now)")
    t0 = time.time()
    greedy = again.generate(test_src, max_new_tokens=LENGTH + 1)
    beam = again.generate(test_src, num_beams=4, max_new_tokens=LENGTH + 1)
    elapsed = time.time() - t0
    for name, ids in (("greedy", greedy), ("beam 4", beam)):
        # generated = start token, the reversed words, EOS
        exact = (ids[:, 1:LENGTH + 2] == test_tgt).all(-1).float().mean().item()
        print(f"    {name:7s} exact match {exact:.3f}   e.g. {ids[0, 1:].tolist()}")
    print(f"    target          {test_tgt[0].tolist()}   ({elapsed:.1f}s for both on {len(test_src)} rows)")


if __name__ == "__main__":
    main()
