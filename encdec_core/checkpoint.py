"""Canonical checkpoint I/O, one import away: the names of :mod:`encdec_core.formats`' modules.

The canonical checkpoint is a folder in Transformers' layout: ``config.json``,
``generation_config.json`` and ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors``
shards plus ``model.safetensors.index.json``), tensors under HF PyTorch names and layouts,
header metadata ``{"format": "pt"}``. Every backend reads and writes it through these
functions, which import no deep-learning framework. Where each piece lives:

* :mod:`encdec_core.formats.safetensors_io`: :class:`CheckpointReader`, :func:`save_safetensors`, :class:`RawTensor`;
* :mod:`encdec_core.formats.shards`: file names, shard planning, shard indexes;
* :mod:`encdec_core.formats.atomic`: atomic files and folders, leftovers of interrupted saves;
* :mod:`encdec_core.formats.jsonio`: JSON read and written as Transformers does;
* :mod:`encdec_core.formats.dtypes`: the one dtype table.

>>> import numpy as np, tempfile
>>> folder = tempfile.mkdtemp()
>>> with atomic_write_dir(folder) as tmp:
...     _ = save_safetensors({"w": np.ones((2, 3), np.float32)}, tmp)
>>> with CheckpointReader(folder) as ckpt:
...     ckpt.shape("w"), ckpt.dtype("w"), float(ckpt.get("w").sum())
((2, 3), 'F32', 6.0)
"""

from __future__ import annotations

from encdec_core.formats.atomic import (
    atomic_output,
    atomic_write_dir,
    atomic_write_file,
    check_interrupted,
    interrupted_leftovers,
    recover_interrupted,
)
from encdec_core.formats.jsonio import read_json, write_json
from encdec_core.formats.safetensors_io import CheckpointReader, RawTensor, Tensor, save_safetensors
from encdec_core.formats.shards import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHT_FILE_PATTERNS,
    ShardIndex,
    parse_size,
    plan_shards,
    read_index,
    remove_stale_files,
    write_index,
)

__all__ = [
    "CONFIG_NAME",
    "GENERATION_CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "PT_WEIGHTS_NAME",
    "PT_WEIGHTS_INDEX_NAME",
    "WEIGHT_FILE_PATTERNS",
    "RawTensor",
    "Tensor",
    "CheckpointReader",
    "ShardIndex",
    "save_safetensors",
    "parse_size",
    "plan_shards",
    "write_index",
    "read_index",
    "remove_stale_files",
    "atomic_write_dir",
    "atomic_write_file",
    "atomic_output",
    "recover_interrupted",
    "interrupted_leftovers",
    "check_interrupted",
    "write_json",
    "read_json",
]
