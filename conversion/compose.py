"""``encdec compose``: warm-start an encoder-decoder from two pretrained checkpoints and save it canonically.

The chosen backend does the warm start (``from_encoder_decoder_pretrained``: the decoder is
made causal, its cross-attention and any ``enc_to_dec_proj`` are new) and saves the
canonical checkpoint. ``tie=True`` shares the encoder with the decoder's base model
(BERTShare / RoBERTaShare of Rothe et al.): as Transformers does, the decoder's weights are
kept, ``config.json`` says ``tie_encoder_decoder: true``, and the encoder's weights are
written as copies of the decoder's (both copies, as the models' ``save_pretrained`` write a
tied model: Transformers 5.x ignores the flag and loads each side, 4.57 ties them).
The encoder's tokenizer files (``tokenizer.json``, its vocabulary, ...) are copied into the
composed folder, so ``encdec generate OUT --text ...`` goes from text to text with no
``--tokenizer``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from conversion import runners
from conversion.formats import read_canonical
from conversion.naming import tables_for
from conversion.writers import write_weights
from encdec_core.checkpoint import atomic_write_dir, write_json
from encdec_core.configs import config_from_dict
from encdec_core.errors import CheckpointError, EncdecError, InputError
from encdec_core.hub import resolve_checkpoint

TOKENS = ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id")
# what Transformers' tokenizers save (fast and slow, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
logger = logging.getLogger("encdec")


def tokenizer_files(checkpoint: str | os.PathLike[str]) -> list[Path]:
    """The tokenizer files of a checkpoint folder, or of a Hub repo (fetched like its weights, or from the cache).

    A repo without them, or one that cannot be reached offline, has none: composing still
    works, and ``encdec generate --text`` then needs ``--tokenizer``.
    """
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        try:
            folder = resolve_checkpoint(str(checkpoint), allow_patterns=list(TOKENIZER_FILES))
        except (EncdecError, OSError) as e:
            logger.info("%s: no tokenizer files fetched (%s)", checkpoint, e)
            return []
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def _copy_tokenizer(encoder: str | os.PathLike[str], decoder: str | os.PathLike[str], out: Path) -> None:
    """Copy the encoder's tokenizer files into ``out``; say so when the decoder's tokenizer is another one."""
    files = tokenizer_files(encoder)
    for f in files:
        shutil.copyfile(f, out / f.name)
    theirs = {f.name: f for f in tokenizer_files(decoder)} if str(decoder) != str(encoder) else {}
    if "tokenizer.json" in theirs and (
        not files or theirs["tokenizer.json"].read_bytes() != (out / "tokenizer.json").read_bytes()
    ):
        logger.warning(
            "%s: the decoder's tokenizer differs from the encoder's; the composed checkpoint keeps the "
            "encoder's (%s), so decode generated ids with the decoder's own tokenizer",
            decoder,
            "tokenizer.json" if files else "none",
        )


def _tie(folder: Path, out: Path) -> None:
    """Rewrite the canonical checkpoint in ``folder`` into ``out`` with ``tie_encoder_decoder`` on (side files kept)."""
    _, _, arrays = read_canonical(folder)
    data = json.loads((folder / "config.json").read_text())
    data["tie_encoder_decoder"] = True
    if data["encoder"]["model_type"] != data["decoder"]["model_type"]:
        raise InputError(
            f"--tie shares the encoder with the decoder's base model: both must be the same kind of model, "
            f"got {data['encoder']['model_type']} and {data['decoder']['model_type']}"
        )
    config = config_from_dict(data, source=str(folder / "config.json"))
    tied = tables_for(config, "encoder-decoder")
    bad = [
        f"{t.pt} {tuple(arrays[t.pt].shape)} vs {t.source} {tuple(arrays[t.source].shape)}"
        for t in tied.ties
        if t.pt in arrays and t.source in arrays and arrays[t.pt].shape != arrays[t.source].shape
    ]
    if bad:
        raise InputError(
            f"--tie shares every encoder weight with the decoder's base model, so both must have the "
            f"same architecture and sizes; shapes differ: {'; '.join(bad[:5])}"
        )
    with atomic_write_dir(out) as tmp:
        for side in sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.name != "config.json" and (p.suffix == ".json" or p.name in TOKENIZER_FILES)
        ):
            (tmp / side).write_bytes((folder / side).read_bytes())
        write_json(tmp / "config.json", data)
        write_weights({p.pt: arrays[p.pt] for p in tied.stored}, tmp, "pt", tied, config=config)


def compose(
    encoder: str | os.PathLike[str],
    decoder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    framework: str = "pt",
    tie: bool = False,
    overwrite: bool = False,
    **tokens: int | None,
) -> Path:
    """Warm-start ``encoder`` + ``decoder`` (folders or Hub repo ids) with ``framework``; save canonically into ``out``.

    ``tokens``: ``decoder_start_token_id``, ``pad_token_id``, ``eos_token_id``,
    ``bos_token_id`` for the composed config (unset ones stay unset, as in Transformers).
    Returns ``out``; the loading report (new weights listed as expected) is logged.
    """
    if bad := sorted(set(tokens) - set(TOKENS)):
        raise InputError(f"compose: unknown options {bad}; expected some of {', '.join(TOKENS)}")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out}: exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    cls = runners.model_class(framework)
    model = cls.from_encoder_decoder_pretrained(
        str(encoder), str(decoder), **{k: v for k, v in tokens.items() if v is not None}
    )
    if not tie:
        with atomic_write_dir(out) as target:  # the checkpoint and its tokenizer appear together
            model.save_pretrained(target)
            _copy_tokenizer(encoder, decoder, target)
        return out
    with tempfile.TemporaryDirectory(prefix="encdec-compose-") as tmp:
        model.save_pretrained(Path(tmp) / "untied")
        _copy_tokenizer(encoder, decoder, Path(tmp) / "untied")
        _tie(Path(tmp) / "untied", out)
    return out


__all__ = ["compose", "tokenizer_files", "TOKENS", "TOKENIZER_FILES"]
