"""Sharded training with PyTorch's own engines: DDP and FSDP2 (``fully_shard``).

``DistributedDataParallel(model)`` works as is: every trainable parameter receives a gradient
from the seq2seq loss (the encoder's pooler, which the loss never reaches, is frozen), so no
``find_unused_parameters``. For FSDP2, :func:`shard_model` wraps each transformer block of the
encoder and the decoder, then the whole model; :func:`save_sharded` gathers the full state
dict on rank 0 and writes the ordinary checkpoint, which any backend loads.

>>> # torchrun --nproc-per-node 2 train.py
>>> # dist.init_process_group("gloo"); model = shard_model(model); ...; save_sharded(model, "out")
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
from torch import nn


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an EncoderDecoderModel's encoder and decoder, in order."""
    enc = model.encoder
    enc_blocks = list(enc.h) if hasattr(enc, "h") else list(enc.encoder.layer)
    return enc_blocks + list(model.decoder.blocks())


def shard_model(model: nn.Module, **fsdp_kwargs) -> nn.Module:
    """FSDP2: shard each block, then the rest (embeddings, heads, projection) at the root.

    Weights shared by a tie (LM head and embeddings, ``tie_encoder_decoder``) stay in one
    FSDP unit because embeddings and heads live at the root.
    """
    from torch.distributed.fsdp import fully_shard

    for block in blocks(model):
        fully_shard(block, **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def save_sharded(model: nn.Module, save_directory: str | os.PathLike, **save_kwargs) -> Path | None:
    """Gather the full state dict (on CPU) and write the checkpoint from rank 0; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    folder = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        folder = model.save_pretrained(save_directory, state_dict=full, **save_kwargs)
    if dist.is_initialized():
        dist.barrier()
    return folder


__all__ = ["blocks", "shard_model", "save_sharded"]
