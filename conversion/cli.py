"""The ``encdec`` command line: convert, parity, inspect, compose, generate. ``encdec --help`` for the tour.

Exit codes: 0 success; 1 a parity check that failed; 2 a usage error, a missing or unreadable
checkpoint, or a format that does not fit (the message names the file and what was expected).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from encdec_core import EncdecError, __version__

EPILOG = """\
examples:
  encdec inspect ./bert2gpt2                           what a checkpoint holds
  encdec convert ./bert2gpt2 ./bert2gpt2-tf --to h5    Transformers' tf_model.h5
  encdec convert ./hf-flax ./canonical --to pt         any format -> canonical safetensors
  encdec parity ./bert2gpt2 --plot parity.png          PyTorch, TensorFlow and Flax agree?
  encdec compose bert-base-uncased gpt2 ./bert2gpt2 --decoder-start-token-id 101 --pad-token-id 0
  encdec generate ./bert2gpt2 --ids 101,2023,102 --num-beams 3
  encdec generate ./minilm2minilm --text "Retrun a copy."   text in, text out (the folder's tokenizer.json)

formats: pt (canonical model.safetensors: HF PyTorch names), tf / flax (TF- or Flax-named
safetensors), h5 (tf_model.h5), msgpack (flax_model.msgpack), bin (pytorch_model.bin).
exit codes: 0 ok, 1 parity failed, 2 usage error or unusable checkpoint.
"""


class UsageError(EncdecError):
    """A command line that cannot be carried out as written (exit code 2)."""


def _csv_frameworks(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in ("pt", "tf", "flax")]
    if bad or len(items) < 2:
        raise argparse.ArgumentTypeError(f"expected two or more of pt,tf,flax separated by commas, got {text!r}")
    return items


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like 101,2023,102, got {text!r}") from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative token ids like 101,2023,102, got {text!r}")
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encdec",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="encdec: encoder-decoder models from pretrained parts, in PyTorch, TensorFlow and Flax.\n"
        "A checkpoint is a folder (config.json + weights) or a Hub repo id.",
    )
    parser.add_argument("--version", action="version", version=f"encdec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done (loading reports, files)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "convert",
        help="convert a checkpoint to another format",
        description="Convert the checkpoint folder SRC into DST in another format. The source is only "
        "read; DST is written atomically; config.json, generation_config.json and other "
        "non-weight files (tokenizer) are copied.",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint folder in any format")
    p.add_argument("dst", metavar="DST", help="folder to write (must not hold a checkpoint, unless --overwrite)")
    p.add_argument(
        "--to",
        required=True,
        choices=("pt", "tf", "flax", "h5", "msgpack", "bin"),
        help="pt: canonical model.safetensors; tf/flax: TF- or Flax-named safetensors; h5: tf_model.h5; "
        "msgpack: flax_model.msgpack; bin: pytorch_model.bin",
    )
    p.add_argument("--max-shard-size", metavar="SIZE", help="split the weights into shards, e.g. 2GB or 500MB")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "parity",
        help="check that PyTorch, TensorFlow and Flax compute the same numbers",
        description="Load PATH in each framework, run the same padded batch with labels, and compare "
        "logits, loss, every layer's hidden states and cross-attention, and greedy and "
        "beam ids with the reference. Exits 1 if anything is over the tolerance.",
    )
    p.add_argument("path", metavar="PATH", help="encoder-decoder checkpoint folder (any format)")
    p.add_argument(
        "--frameworks",
        type=_csv_frameworks,
        default=["pt", "tf", "flax"],
        metavar="LIST",
        help="comma-separated, two or more of pt,tf,flax (default: all three)",
    )
    p.add_argument(
        "--reference",
        choices=("pt", "tf", "flax"),
        help="framework the others are compared with (default: pt if compared)",
    )
    p.add_argument("--tolerance", type=float, help="absolute tolerance (default: 1e-5, fp32)")
    p.add_argument(
        "--rtol",
        type=float,
        help="tolerance relative to each output's max magnitude, added to the "
        "absolute one as numpy.allclose (default: 1e-5; 0: absolute only)",
    )
    p.add_argument("--plot", metavar="FILE", help="write a per-layer difference plot (PNG; needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of a table")
    p.add_argument("--no-generate", action="store_true", help="skip the greedy / beam id comparison")

    p = sub.add_parser(
        "inspect",
        help="show a checkpoint's format, architecture, parameter counts and dtypes",
        description="Summarise a checkpoint: format, kind, architecture, parameters per part, "
        "tied and expected-new weights, dtypes and sizes (JSON).",
    )
    p.add_argument("path", metavar="PATH", help="a checkpoint folder or a Hub repo id")
    p.add_argument("--text", action="store_true", help="a few readable lines instead of JSON")

    p = sub.add_parser(
        "compose",
        help="warm-start an encoder-decoder from two pretrained checkpoints",
        description="Load a pretrained ENCODER and DECODER, add the decoder's cross-attention (and a "
        "projection when the widths differ), and save the canonical checkpoint to OUT.",
    )
    p.add_argument("encoder", metavar="ENCODER", help="encoder checkpoint folder or Hub repo id (BERT, RoBERTa)")
    p.add_argument("decoder", metavar="DECODER", help="decoder checkpoint folder or Hub repo id (BERT, RoBERTa, GPT-2)")
    p.add_argument("out", metavar="OUT", help="folder to write")
    p.add_argument("--framework", choices=("pt", "tf", "flax"), default="pt", help="backend doing it (default pt)")
    p.add_argument("--tie", action="store_true", help="share the encoder with the decoder (same model type and sizes)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    for token in ("decoder-start-token-id", "pad-token-id", "eos-token-id", "bos-token-id"):
        p.add_argument(f"--{token}", type=int, metavar="ID", help=f"{token.replace('-', '_')} of the composed model")

    p = sub.add_parser(
        "generate",
        help="generate token ids (or text) from a checkpoint",
        description="Generate with greedy search (or beam search with --num-beams) from token ids, "
        "or from text with a tokenizers tokenizer.json. Prints one line per input.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", type=_ids, action="append", metavar="IDS", help="comma-separated ids; repeat for a batch")
    src.add_argument(
        "--text",
        action="append",
        metavar="TEXT",
        help="input text, tokenized with the checkpoint's tokenizer.json (or --tokenizer); repeatable",
    )
    p.add_argument("path", metavar="PATH", help="encoder-decoder checkpoint folder or Hub repo id")
    p.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="a tokenizer.json other than the checkpoint's own (the "
        "`tokenizers` package: pip install 'encdec[tokenizers]')",
    )
    p.add_argument("--framework", choices=("pt", "tf", "flax"), default="pt", help="backend (default pt)")
    p.add_argument("--num-beams", type=int, default=1, metavar="N", help="beam search with N beams (default 1: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=20, metavar="N", help="tokens to generate at most (20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


# ------------------------------------------------------------------------------ commands
def cmd_convert(args) -> int:
    from conversion.formats import convert

    out = convert(
        args.src,
        args.dst,
        to=args.to,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )
    print(f"wrote {out} ({args.to})")
    return 0


def cmd_parity(args) -> int:
    from conversion.parity import check_parity

    report = check_parity(
        args.path,
        frameworks=args.frameworks,
        tolerance=args.tolerance,
        plot=args.plot,
        generate=not args.no_generate,
        reference=args.reference,
        rtol=args.rtol,
    )
    print(report.to_json() if args.json else report.table())
    return 0 if report.passed else 1


def cmd_inspect(args) -> int:
    from conversion.summary import format_summary, inspect_checkpoint

    info = inspect_checkpoint(args.path)
    print(format_summary(info) if args.text else json.dumps(info, indent=2))
    return 0


def cmd_compose(args) -> int:
    from conversion.compose import compose

    tokens = {k: getattr(args, k) for k in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id")}
    out = compose(
        args.encoder, args.decoder, args.out, framework=args.framework, tie=args.tie, overwrite=args.overwrite, **tokens
    )
    print(f"wrote {out}")
    if tokens["decoder_start_token_id"] is None or tokens["pad_token_id"] is None:
        print(
            "note: decoder_start_token_id / pad_token_id are unset; set them (e.g. --decoder-start-token-id 101 "
            "--pad-token-id 0) before training with labels or generating",
            file=sys.stderr,
        )
    return 0


def _tokenizer(path: str | None, folder: Path):
    """``--tokenizer FILE``, else the checkpoint's own ``tokenizer.json``; padding is ours (the pad id, a mask)."""
    if path is None:
        if not (folder / "tokenizer.json").is_file():
            raise UsageError(
                f"--text needs a tokenizer: {folder} has no tokenizer.json; pass --tokenizer FILE "
                "(a tokenizers tokenizer.json) or --ids"
            )
        path = str(folder / "tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("--text needs the `tokenizers` package: pip install 'encdec[tokenizers]'") from None
    if not Path(path).is_file():
        raise UsageError(f"--tokenizer {path}: no such file")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own exception type on a bad file
        raise UsageError(f"--tokenizer {path}: not a tokenizers tokenizer.json: {e}") from e
    tok.no_padding()  # a saved padding setting (e.g. pad to 128) would feed pads as real tokens
    return tok


def cmd_generate(args) -> int:
    import numpy as np

    from conversion import runners
    from encdec_core.configs import load_config
    from encdec_core.hub import resolve_checkpoint

    if args.num_beams < 1 or args.max_new_tokens < 1:
        raise UsageError("--num-beams and --max-new-tokens must be at least 1")
    folder = resolve_checkpoint(args.path)
    tok = _tokenizer(args.tokenizer, folder) if args.text else None
    rows = [e.ids for e in tok.encode_batch(args.text)] if tok else args.ids
    config = load_config(folder)
    pad = getattr(config, "pad_token_id", None)
    pad = pad if pad is not None else 0
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    with tempfile.TemporaryDirectory(prefix="encdec-generate-") as tmp:
        model = runners.load(args.framework, runners.loadable_folder(args.framework, folder, Path(tmp)))
        out = runners.generate(
            args.framework,
            model,
            {"input_ids": ids, "attention_mask": mask},
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
        )
    result = {"framework": args.framework, "ids": out.tolist()}
    if tok:
        result["text"] = tok.decode_batch(out.tolist(), skip_special_tokens=True)
    if args.json:
        print(json.dumps(result))
    else:  # text in, text out; ids in, ids out
        print("\n".join(result["text"] if tok else (" ".join(map(str, row)) for row in result["ids"])))
    return 0


COMMANDS = {
    "convert": cmd_convert,
    "parity": cmd_parity,
    "inspect": cmd_inspect,
    "compose": cmd_compose,
    "generate": cmd_generate,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (EncdecError, OSError) as e:  # our errors name the file and what was expected: no traceback
        print(f"encdec {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
