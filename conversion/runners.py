"""Run one checkpoint in each framework the same way: load, a forward pass with every output, greedy and beam ids.

The parity checker and the cross-framework test matrix both go through these few functions,
so "the same batch" means the same numpy arrays handed to each backend's public API
(``from_pretrained``, ``__call__`` with HF's argument names, ``generate``). Each framework is
imported inside the function that needs it. Outputs come back as numpy float32, keyed
``logits``, ``loss``, ``encoder_hidden_states.{i}``, ``decoder_hidden_states.{i}``,
``cross_attentions.{i}`` (attention probabilities, (B, heads, T, S)).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encdec_core.configs import EncoderDecoderConfig

logger = logging.getLogger("encdec")
FRAMEWORKS = ("pt", "tf", "flax")
# framework -> (module, class, checkpoint formats its from_pretrained reads)
BACKENDS = {
    "pt": ("encdec_pt", "EncoderDecoderModel", ("pt", "bin")),
    "tf": ("encdec_tf", "TFEncoderDecoderModel", ("pt", "tf", "h5", "bin")),
    "flax": ("encdec_flax", "FlaxEncoderDecoderModel", ("pt", "flax", "msgpack", "bin")),
}
FIELDS = ("encoder_hidden_states", "decoder_hidden_states", "cross_attentions")


def model_class(framework: str) -> type:
    """The backend's encoder-decoder class (importing the framework)."""
    if framework not in BACKENDS:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if framework == "tf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter is not ours to print
    module, name, _ = BACKENDS[framework]
    return getattr(importlib.import_module(module), name)


def load(framework: str, path: str | os.PathLike[str]) -> Any:
    """``from_pretrained(path)`` of the framework's class; the loading report stays quiet."""
    return model_class(framework).from_pretrained(path, log_report=False)


def loadable_folder(framework: str, folder: Path, tmp: Path) -> Path:
    """``folder`` if the framework reads one of its formats, else a canonical conversion of it written under ``tmp``."""
    from conversion.formats import convert, present_formats

    if any(f in BACKENDS[framework][2] for f in present_formats(folder)):
        return folder
    canonical = tmp / "canonical"
    if not canonical.exists():
        logger.info("%s: %s reads none of its formats; converting to the canonical format first", folder, framework)
        convert(folder, canonical, to="pt")
    return canonical


def _limit(config) -> int:
    limit = config.max_position_embeddings
    return limit - (config.pad_token_id or 0) - 1 if config.model_type == "roberta" else limit


def default_batch(
    config: EncoderDecoderConfig, *, batch_size: int = 3, source_length: int = 11, target_length: int = 7, seed: int = 0
) -> dict[str, np.ndarray]:
    """A padded batch from the vocabularies: ``input_ids``, ``attention_mask`` and ``labels`` (int64).

    Row ``i`` has ``(0, 3, 5)[i % 3]`` right pads in the source and ``(0, 2, 4)[i % 3]``
    trailing -100 labels, so masking is exercised on both sides. Special ids (pad, bos, eos,
    decoder start) are never drawn. Without ``decoder_start_token_id`` or ``pad_token_id``
    labels cannot be shifted: explicit ``decoder_input_ids`` / ``decoder_attention_mask`` are
    given instead (and there is no loss).
    """
    rng = np.random.default_rng(seed)
    enc, dec = config.encoder, config.decoder
    special = {
        t
        for c in (config, enc, dec)
        for t in (c.pad_token_id, c.bos_token_id, c.eos_token_id, getattr(c, "decoder_start_token_id", None))
        if isinstance(t, int)
    }
    s, t = min(source_length, _limit(enc)), min(target_length, _limit(dec))

    def draw(vocab: int, shape: tuple[int, int]) -> np.ndarray:
        pool = np.array([i for i in range(vocab) if i not in special], dtype=np.int64)
        return pool[rng.integers(0, len(pool), shape)]

    pad = enc.pad_token_id if enc.pad_token_id is not None else (config.pad_token_id or 0)
    ids, mask = draw(enc.vocab_size, (batch_size, s)), np.ones((batch_size, s), np.int64)
    for i in range(batch_size):
        n = min((0, 3, 5)[i % 3], s - 1)
        ids[i, s - n :], mask[i, s - n :] = pad, 0
    labels = draw(dec.vocab_size, (batch_size, t))
    for i in range(batch_size):
        n = min((0, 2, 4)[i % 3], t - 1)
        labels[i, t - n :] = -100
    if config.decoder_start_token_id is not None and config.pad_token_id is not None:
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    dec_mask = (labels != -100).astype(np.int64)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "decoder_input_ids": np.where(dec_mask, labels, 0),
        "decoder_attention_mask": dec_mask,
    }


def _to(framework: str, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    if framework == "pt":
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    if framework == "tf":
        import tensorflow as tf

        return {k: tf.constant(v) for k, v in batch.items()}
    return {k: np.asarray(v) for k, v in batch.items()}


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x)


def forward(framework: str, model: Any, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One forward pass with hidden states and attentions; outputs as float32 numpy (see the module docstring)."""
    inputs = _to(framework, batch)
    if framework == "pt":
        import torch

        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
    else:
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    result = {"logits": _numpy(out.logits).astype(np.float32)}
    if getattr(out, "loss", None) is not None:
        result["loss"] = _numpy(out.loss).astype(np.float32).reshape(())
    for field in FIELDS:
        for i, a in enumerate(getattr(out, field) or ()):
            result[f"{field}.{i}"] = _numpy(a).astype(np.float32)
    return result


def generate(
    framework: str, model: Any, batch: Mapping[str, np.ndarray], *, num_beams: int = 1, max_new_tokens: int = 8
) -> np.ndarray:
    """``model.generate(input_ids, attention_mask=..., max_new_tokens=..., num_beams=...)`` as int64 numpy ids."""
    inputs = _to(framework, {k: batch[k] for k in ("input_ids", "attention_mask")})
    out = model.generate(
        inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=False,
    )
    return _numpy(getattr(out, "sequences", out)).astype(np.int64)


__all__ = ["FRAMEWORKS", "BACKENDS", "model_class", "load", "loadable_folder", "default_batch", "forward", "generate"]
