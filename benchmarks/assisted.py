"""Assisted decoding on a copy-heavy task, ours against Transformers 4.57, in PyTorch, TF and Flax.

The task is the demo's (``examples/demo.py``): spelling correction of sentences of Python's
documentation, where the output is the source with one or two words fixed. The model is the
demo's MiniLM2MiniLM (all-MiniLM-L6-v2 warm-started on both sides) fine-tuned for ``--steps``
steps, cached under ``--cache``. Every held-out sentence is generated alone (batch 1, as
Transformers' assisted decoding requires), padded to one bucket length with its mask so TF and
Flax compile once, EOS on, ``max_new_tokens`` 48:

* greedy search;
* prompt lookup (``prompt_lookup_num_tokens=K``; ours copies from the source, Transformers 4.57's
  searches the decoder's own prefix, which is what it does for an encoder-decoder);
* a draft model (``assistant_model=``): the same model with its decoder cut to its first
  ``--draft-layers`` layers, ``num_assistant_tokens=K``.

Each variant's ids are asserted equal to greedy's. Reported: total time over the sentences
(after a warm-up sentence: TF's and Flax's compiles are left out), the speed-up over the same
side's greedy, ours/Transformers, decoder calls per generated token and the acceptance rate
(``accepted_tokens / candidate_tokens`` of :class:`~encdec_core.outputs.GenerateOutput`).

``PYTHONPATH=. .venv/bin/python -m benchmarks.assisted --threads 1 --ref /work/venv-ref/bin/python``
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
BUCKET, NEW = 64, 48


def copy_model(cache: Path, steps: int):
    """The demo's MiniLM2MiniLM fine-tuned for ``steps`` steps (trained once, then read from ``cache``)."""
    import demo
    import text_task as task
    import torch

    folder = cache / f"copy_minilm_{steps}"
    if not (folder / "config.json").exists():
        minilm = task.minilm_path()
        split = task.make_split(task.corpus(), 256, seed=0)
        model = demo.build("MiniLM2MiniLM", minilm, 0)
        args = SimpleNamespace(steps=steps, batch_size=16, lr=3e-4, seed=0)
        demo.train(model, split, task.load_tokenizer(minilm), args, "copy model")
        demo.save_with_tokenizer(model.eval(), folder, minilm)
        torch.manual_seed(0)
    return folder


def draft_folder(folder: Path, layers: int) -> Path:
    """The model with its decoder cut to its first ``layers`` layers (no training): a draft that costs less."""
    from encdec_pt import EncoderDecoderModel

    out = folder.parent / f"{folder.name}_draft{layers}"
    if not (out / "config.json").exists():
        model = EncoderDecoderModel.from_pretrained(folder)
        config = copy.deepcopy(model.config)
        config.decoder.num_hidden_layers = layers
        draft = EncoderDecoderModel(config)
        missing, unexpected = draft.load_state_dict(model.state_dict(), strict=False)
        assert not missing, missing  # every draft weight comes from the model
        draft.save_pretrained(out)
    return out


def sentences(n: int):
    """n held-out sources, each (1, BUCKET) ids and mask."""
    import demo
    import text_task as task

    split = task.make_split(task.corpus(), 256, seed=0)
    tok = task.load_tokenizer(task.minilm_path())
    rows = []
    for src in split.test_source[:n]:
        b = task.encode(tok, [src])
        ids = np.zeros((1, BUCKET), np.int64)
        ids[:, : b["input_ids"].shape[1]] = b["input_ids"][:, :BUCKET]
        rows.append((ids, (ids != demo.PAD).astype(np.int64)))
    return rows


def variants(k_lookup: list[int], k_draft: int) -> dict:
    return {
        "greedy": {},
        **{f"lookup{k}": {"prompt_lookup_num_tokens": k} for k in k_lookup},
        f"draft{k_draft}": {"num_assistant_tokens": k_draft, "assistant_model": "draft"},
    }


def run_ours(framework: str, folder: Path, draft: Path, rows, runs: dict) -> dict:
    """{variant: {seconds, ids, calls, candidates, accepted}} for one framework."""
    if framework == "pt":
        import torch

        from encdec_pt import EncoderDecoderModel as cls

        def arr(x):
            return torch.from_numpy(x)
    elif framework == "tf":
        import tensorflow as tf

        from encdec_tf import TFEncoderDecoderModel as cls

        def arr(x):
            return tf.constant(x, tf.int32)
    else:
        import jax.numpy as jnp

        from encdec_flax import FlaxEncoderDecoderModel as cls

        def arr(x):
            return jnp.asarray(x, jnp.int32)

    model, assistant = cls.from_pretrained(folder), cls.from_pretrained(draft)
    out = {}
    for name, kw in runs.items():
        kw = {k: (assistant if v == "draft" else v) for k, v in kw.items()}

        def gen(ids, mask, kw=kw):
            return model.generate(
                arr(ids), attention_mask=arr(mask), max_new_tokens=NEW, return_dict_in_generate=True, **kw
            )

        gen(*rows[0])  # warm-up: compiles (TF, Flax) and first-call costs are left out
        seqs, counts, t0 = [], np.zeros(3, np.int64), time.perf_counter()
        for ids, mask in rows:
            o = gen(ids, mask)
            seqs.append(np.asarray(o.sequences)[0].tolist())
            if o.decoder_calls is not None:
                counts += (o.decoder_calls, o.candidate_tokens, o.accepted_tokens)
        out[name] = {"seconds": time.perf_counter() - t0, "ids": seqs, "counts": counts.tolist()}
    return out


THEIRS = r"""
import json, sys, time, numpy as np, torch
from transformers import EncoderDecoderModel
torch.set_num_threads(int(sys.argv[4]))
rows = [(np.asarray(i), np.asarray(m)) for i, m in json.loads(open(sys.argv[3]).read())]
model, draft = EncoderDecoderModel.from_pretrained(sys.argv[1]).eval(), EncoderDecoderModel.from_pretrained(sys.argv[2]).eval()
runs, out = json.loads(sys.argv[5]), {}
for name, kw in runs.items():
    kw = {k: (draft if v == "draft" else v) for k, v in kw.items()}
    def gen(ids, mask):
        with torch.no_grad():
            return model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=48, **kw)
    gen(*rows[0])
    t0, seqs = time.perf_counter(), []
    for ids, mask in rows:
        seqs.append(gen(ids, mask)[0].tolist())
    out[name] = {"seconds": time.perf_counter() - t0, "ids": seqs}
print("RESULT" + json.dumps(out))
"""


def run_theirs(ref: str, folder: Path, draft: Path, rows, runs: dict, threads: int) -> dict:
    data = folder.parent / "assisted_inputs.json"
    data.write_text(json.dumps([(i.tolist(), m.tolist()) for i, m in rows]))
    cmd = [ref, "-c", THEIRS, str(folder), str(draft), str(data), str(threads), json.dumps(runs)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.split("RESULT", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps of the copy model")
    p.add_argument("--n", type=int, default=24, help="held-out sentences")
    p.add_argument("--k-lookup", default="2,8", help="prompt_lookup_num_tokens values, comma-separated")
    p.add_argument("--k-draft", type=int, default=4)
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--frameworks", default="pt,tf,flax")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ref", default=None, help="a Python with Transformers 4.57 for the 'theirs' column")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    args = p.parse_args()
    import torch

    folder = copy_model(args.cache, args.steps)  # trained with torch's default threads
    draft = draft_folder(folder, args.draft_layers)
    torch.set_num_threads(args.threads)
    rows, runs = sentences(args.n), variants([int(k) for k in args.k_lookup.split(",")], args.k_draft)
    results = {fw: run_ours(fw, folder, draft, rows, runs) for fw in args.frameworks.split(",")}
    if args.ref:
        results["theirs"] = run_theirs(args.ref, folder, draft, rows, runs, args.threads)
    greedy = results["pt"]["greedy"]["ids"]
    print(f"{args.n} sentences, batch 1, source bucket {BUCKET}, max_new_tokens {NEW}, {args.threads} thread(s)")
    print("| side | variant | seconds | speed-up vs greedy | ours/theirs | calls per token | acceptance |")
    print("|---|---|---|---|---|---|---|")
    for side, res in results.items():
        for name, r in res.items():
            assert r["ids"] == greedy, f"{side} {name}: ids differ from PyTorch greedy"
            calls, cand, acc = r.get("counts", (0, 0, 0))
            tokens = sum(len(s) - 1 for s in r["ids"])
            theirs = results.get("theirs", {}).get(name)
            ratio = f"{r['seconds'] / theirs['seconds']:.2f}" if theirs and side != "theirs" else "-"
            print(
                f"| {side} | {name} | {r['seconds']:.2f} | {res['greedy']['seconds'] / r['seconds']:.2f} | {ratio} | "
                f"{calls / tokens:.2f} | {acc / cand:.2f} |"
                if cand
                else f"| {side} | {name} | {r['seconds']:.2f} | {res['greedy']['seconds'] / r['seconds']:.2f} | {ratio} | - | - |"
            )


if __name__ == "__main__":
    main()
