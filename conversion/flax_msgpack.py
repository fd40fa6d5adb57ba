"""HF Flax ``flax_model.msgpack``: moved to :mod:`encdec_core.formats.flax_msgpack` (below the backends, which read it).

Kept here so ``conversion.flax_msgpack`` imports keep working.
"""

from __future__ import annotations

from encdec_core.formats.flax_msgpack import (
    FLAX_WEIGHTS_INDEX_NAME,
    FLAX_WEIGHTS_NAME,
    flatten_tree,
    read_flax_msgpack,
    unflatten_tree,
    write_flax_msgpack,
)

__all__ = [
    "FLAX_WEIGHTS_NAME",
    "FLAX_WEIGHTS_INDEX_NAME",
    "flatten_tree",
    "unflatten_tree",
    "read_flax_msgpack",
    "write_flax_msgpack",
]
