"""Random base-size (or tiny) checkpoints, written once into a cache folder with a fixed seed.

Three HF-format checkpoints, written with encdec's own PyTorch classes (their
``save_pretrained`` writes Transformers' format, so both implementations read the same files):

* ``bert``    -- a BERT encoder (``BertModel`` with pooler, like ``bert-base-uncased``'s body),
* ``bert-lm`` -- a plain BERT checkpoint with its LM head (``is_decoder=False``, no
  cross-attention): warm-starting makes it causal and adds cross-attention,
* ``gpt2``    -- GPT-2 (``GPT2LMHeadModel``, embeddings tied to the head).

Each folder name carries a hash of its config and seed, so changing a size writes a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

logger = logging.getLogger("benchmarks")

DEFAULT_CACHE = Path(__file__).parent / ".cache"

BERT_BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
GPT2_SMALL = dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)
# --tiny: the test suite's odd sizes; positions stay large enough for the same workload
BERT_TINY = dict(
    vocab_size=99,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=37,
    max_position_embeddings=512,
)
GPT2_TINY = dict(vocab_size=99, n_embd=36, n_layer=2, n_head=3, n_inner=37, n_positions=1024)

# checkpoint name -> (encdec_pt class name, config class name, seed)
CHECKPOINTS = {
    "bert": ("BertModel", "BertConfig", 0),
    "bert-lm": ("BertLMHeadModel", "BertConfig", 1),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", 2),
}
# pair -> (encoder checkpoint, decoder checkpoint)
PAIRS = {"bert2bert": ("bert", "bert-lm"), "bert2gpt2": ("bert", "gpt2")}


def sizes(name: str, tiny: bool) -> dict:
    bert, gpt2 = (BERT_TINY, GPT2_TINY) if tiny else (BERT_BASE, GPT2_SMALL)
    return dict(gpt2 if name == "gpt2" else bert)


def checkpoint_dir(name: str, tiny: bool, cache: Path = DEFAULT_CACHE) -> Path:
    cls_name, _, seed = CHECKPOINTS[name]
    key = json.dumps([cls_name, seed, sizes(name, tiny)], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return Path(cache) / f"{'tiny' if tiny else 'base'}-{name}-{digest}"


def ensure_checkpoint(name: str, tiny: bool, cache: Path = DEFAULT_CACHE) -> Path:
    """The folder of checkpoint ``name``; written (seeded random weights) on first use."""
    folder = checkpoint_dir(name, tiny, cache)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    import torch

    import encdec_pt

    cls_name, cfg_name, seed = CHECKPOINTS[name]
    config = getattr(encdec_pt, cfg_name)(**sizes(name, tiny))
    logger.info("writing random %s checkpoint %s (seed %d)", name, folder, seed)
    torch.manual_seed(seed)
    model = getattr(encdec_pt, cls_name).from_config(config)
    model.save_pretrained(folder)  # atomic: a concurrent reader sees the whole folder or none
    return folder


def pair_dirs(pair: str, tiny: bool, cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """(encoder folder, decoder folder) of ``pair``, written if missing."""
    enc, dec = PAIRS[pair]
    return ensure_checkpoint(enc, tiny, cache), ensure_checkpoint(dec, tiny, cache)


def composite_dir(pair: str, tiny: bool, cache: Path = DEFAULT_CACHE) -> Path:
    """A saved encoder-decoder of ``pair`` (the ``convert`` task's source), written once.

    Warm-started by encdec's PyTorch class from the pair's two checkpoints (new cross-attention
    drawn with a fixed seed), ``decoder_start_token_id=1``, ``pad_token_id=0``, saved canonically.
    """
    enc, dec = pair_dirs(pair, tiny, cache)
    digest = hashlib.sha1(f"{enc.name}+{dec.name}".encode()).hexdigest()[:8]
    folder = Path(cache) / f"{'tiny' if tiny else 'base'}-{pair}-composed-{digest}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    import torch

    from encdec_pt import EncoderDecoderModel

    logger.info("writing the composed %s checkpoint %s", pair, folder)
    torch.manual_seed(3)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        str(enc), str(dec), decoder_start_token_id=1, pad_token_id=0
    )
    model.save_pretrained(folder)
    return folder


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
