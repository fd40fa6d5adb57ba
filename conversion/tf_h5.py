"""Transformers' ``tf_model.h5``: moved to :mod:`encdec_core.formats.tf_h5` (below the backends, which read it).

Kept here so ``conversion.tf_h5`` imports keep working.
"""

from __future__ import annotations

from encdec_core.formats.tf_h5 import (
    TF_WEIGHTS_INDEX_NAME,
    TF_WEIGHTS_NAME,
    TOP_LEVEL_GROUP,
    TFH5Reader,
    has_tf_h5,
    read_names,
    strip_name,
    write_names,
    write_tf_h5,
)

__all__ = [
    "TF_WEIGHTS_NAME",
    "TF_WEIGHTS_INDEX_NAME",
    "TOP_LEVEL_GROUP",
    "TFH5Reader",
    "write_tf_h5",
    "has_tf_h5",
    "strip_name",
    "read_names",
    "write_names",
]
