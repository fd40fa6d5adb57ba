"""The one dtype table: safetensors dtype codes, numpy / ml_dtypes names and item sizes.

Every reader and writer (safetensors, ``.bin``, h5, msgpack, the converter's summary) maps
dtypes through this table. The names are numpy's and ``ml_dtypes``' (the float types numpy
lacks, such as bfloat16), which are also torch's dtype names without the ``torch.`` prefix.

>>> numpy_dtype("F32"), dtype_code("float16"), itemsize("BF16")
(dtype('float32'), 'F16', 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from encdec_core.errors import CheckpointError

# safetensors header code -> (numpy / ml_dtypes / torch name, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "U16": ("uint16", 2),
    "I16": ("int16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "U32": ("uint32", 4),
    "I32": ("int32", 4),
    "F32": ("float32", 4),
    "U64": ("uint64", 8),
    "I64": ("int64", 8),
    "F64": ("float64", 8),
    "C64": ("complex64", 8),
}
NAME_TO_CODE = {name: code for code, (name, _) in DTYPES.items()}


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors dtype code."""
    if code not in DTYPES:
        raise CheckpointError(f"unknown safetensors dtype {code!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[code][1]


def numpy_dtype(code: str) -> np.dtype:
    """The numpy dtype of a safetensors code; bf16 / fp8 come from ``ml_dtypes`` (a JAX and TF dependency)."""
    if code not in DTYPES:
        raise CheckpointError(f"dtype {code!r} has no numpy equivalent; expected one of {sorted(DTYPES)}")
    name = DTYPES[code][0]
    if hasattr(np, name):
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise CheckpointError(
            f"reading {code} tensors as numpy needs the `ml_dtypes` package "
            "(installed with jax or tensorflow): pip install ml_dtypes"
        ) from None
    if not hasattr(ml_dtypes, name):
        raise CheckpointError(f"dtype {code!r} ({name}) is not known to the installed ml_dtypes")
    return np.dtype(getattr(ml_dtypes, name))


def dtype_code(dtype: Any) -> str:
    """Safetensors code of a numpy / ml_dtypes dtype, a dtype name, or a torch dtype (``torch.float32``)."""
    name = dtype if isinstance(dtype, str) else str(dtype) if type(dtype).__module__ == "torch" else None
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    name = name.removeprefix("torch.")
    if name not in NAME_TO_CODE:
        raise CheckpointError(f"dtype {name} has no safetensors code; expected one of {', '.join(NAME_TO_CODE)}")
    return NAME_TO_CODE[name]


__all__ = ["DTYPES", "NAME_TO_CODE", "itemsize", "numpy_dtype", "dtype_code"]
