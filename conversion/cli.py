"""The ``encdec`` command line.

This release has one command, ``encdec inspect PATH``; ``convert``, ``parity``,
``compose`` and ``generate`` are still to come.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from encdec_core import EncdecError, __version__


def inspect_checkpoint(path: str) -> dict:
    """Architecture, parameter counts per part, dtypes and size of a canonical checkpoint."""
    from encdec_core.checkpoint import CheckpointReader
    from encdec_core.configs import EncoderDecoderConfig, load_config
    from encdec_core.hub import resolve_checkpoint

    folder = resolve_checkpoint(path)
    config = load_config(folder)
    with CheckpointReader(folder) as reader:
        parts: Counter = Counter()
        dtypes: Counter = Counter()
        size = 0
        for key in reader.keys():
            n = 1
            for d in reader.shape(key):
                n *= d
            parts[key.split(".", 1)[0] if isinstance(config, EncoderDecoderConfig) else "model"] += n
            dtypes[reader.dtype(key)] += 1
            size += n * {"F64": 8, "F32": 4, "I64": 8, "I32": 4}.get(reader.dtype(key), 2)
    arch = (f"{config.encoder.model_type}2{config.decoder.model_type}" if isinstance(config, EncoderDecoderConfig)
            else config.model_type)
    return {"path": str(folder), "architecture": arch, "parameters": dict(parts), "dtypes": dict(dtypes),
            "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="encdec", description="encdec: warm-started encoder-decoder models.")
    parser.add_argument("--version", action="version", version=f"encdec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show a checkpoint's architecture, parameter counts and dtypes")
    p.add_argument("path", help="a checkpoint folder or a Hub repo id")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(inspect_checkpoint(args.path), indent=2))
    except EncdecError as e:
        print(f"encdec {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
