"""Raw weight files of every format and :class:`Source`: moved to :mod:`encdec_core.formats.sources`.

What stays here is the converter's own: :func:`h5_scope`, which reads the model scope and
Keras version a ``tf_model.h5`` records, to write them back alike. The readers' names are
re-exported so ``conversion.sources`` imports keep working.
"""

from __future__ import annotations

import os
from pathlib import Path

from encdec_core.formats.dtypes import NAME_TO_CODE as DTYPE_CODES
from encdec_core.formats.dtypes import dtype_code, numpy_dtype
from encdec_core.formats.jsonio import read_json
from encdec_core.formats.sources import (
    BinSource,
    H5Source,
    MsgpackSource,
    SafetensorsSource,
    Source,
    from_numpy,
    torch_to_numpy,
)
from encdec_core.formats.tf_h5 import TF_WEIGHTS_INDEX_NAME, TF_WEIGHTS_NAME, read_names


def h5_scope(folder: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """(model scope, keras_version) recorded in a ``tf_model.h5`` (or its shard index), to write them back alike."""
    import h5py

    folder = Path(folder)
    if (folder / TF_WEIGHTS_NAME).is_file():
        with h5py.File(folder / TF_WEIGHTS_NAME, "r") as f:  # read strictly by read_canonical before
            version = f.attrs.get("keras_version")
            version = version.decode() if isinstance(version, bytes) else version
            for layer in read_names(f, "layer_names"):
                names = read_names(f[layer], "weight_names") if layer in f else []
                if names and "/" in names[0]:
                    return names[0].split("/", 1)[0], version
            return None, version
    index = read_json(folder / TF_WEIGHTS_INDEX_NAME, "checkpoint index")
    first = next(iter(index.get("weight_map", {}) if isinstance(index, dict) else {}), "")
    return (first.split("/", 1)[0] if "/" in first else None), None


__all__ = [
    "Source",
    "SafetensorsSource",
    "BinSource",
    "H5Source",
    "MsgpackSource",
    "numpy_dtype",
    "dtype_code",
    "torch_to_numpy",
    "from_numpy",
    "h5_scope",
    "DTYPE_CODES",
]
