"""Raw weight files of every format, read as ``{stored key: numpy array}``, lazily where the format allows.

One small class per container: safetensors (``model.safetensors`` or shards, whatever the
metadata format: "pt", "tf" or "flax"), ``pytorch_model.bin`` (single or sharded),
``tf_model.h5`` (single or sharded) and ``flax_model.msgpack`` (single or sharded). Each has
``keys()``, ``shape(key)``, ``dtype(key)`` (a safetensors dtype code: "F32", "BF16", ...),
``get(key)`` (a numpy array; bf16/fp8 through ``ml_dtypes``, which JAX and TensorFlow
install) and ``close()``. Keys are the names as stored. :class:`Source` puts one of them
behind canonical names and layouts through the tables (:mod:`conversion.naming`).
Frameworks and h5py are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conversion.naming import framework_op, stored_name
from encdec_core.checkpoint import CheckpointReader, read_index
from encdec_core.errors import CheckpointError
from encdec_core.tables import Param, apply_op

# numpy dtype name -> safetensors code (ml_dtypes names for the float types numpy lacks)
DTYPE_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
    "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32", "int64": "I64", "uint64": "U64",
    "float64": "F64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
_CODE_NAMES = {code: name for name, code in DTYPE_CODES.items()}


def numpy_dtype(code: str) -> np.dtype:
    """The numpy dtype of a safetensors code; bf16 / fp8 come from ``ml_dtypes`` (a JAX and TF dependency)."""
    name = _CODE_NAMES.get(code)
    if name is None:
        raise CheckpointError(f"dtype {code!r} has no numpy equivalent; expected one of {sorted(_CODE_NAMES)}")
    if hasattr(np, name):
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise CheckpointError(f"reading {code} tensors as numpy needs the `ml_dtypes` package "
                              "(installed with jax or tensorflow): pip install ml_dtypes") from None
    return np.dtype(getattr(ml_dtypes, name))


def dtype_code(dtype: Any) -> str:
    """Safetensors code of a numpy (or ml_dtypes) dtype."""
    name = np.dtype(dtype).name
    if name not in DTYPE_CODES:
        raise CheckpointError(f"numpy dtype {name} has no safetensors code")
    return DTYPE_CODES[name]


class SafetensorsSource:
    """Safetensors weights: one file, or shards listed by ``model.safetensors.index.json``.

    Transformers' TF classes write a shard index whose keys keep the model scope
    (``tf_encoder_decoder_model/encoder/...:0``) while the shards hold scope-free keys; such
    an index is matched to its shards with the first path segment dropped.
    """

    def __init__(self, folder: Path, single: Path | None, index_path: Path | None):
        self.source = folder
        self._readers: dict[Path, CheckpointReader] = {}  # validate the files, list keys, shapes, dtypes
        self._where: dict[str, CheckpointReader] = {}
        self._maps: dict[Path, tuple[np.memmap, int, dict[str, Any]]] = {}
        try:
            if single is not None:
                self._add(CheckpointReader(single))
            else:
                self._open_shards(index_path)
        except BaseException:
            self.close()
            raise

    def _add(self, reader: CheckpointReader) -> None:
        self._readers[Path(reader.source)] = reader
        for key in reader.keys():
            if key in self._where:
                raise CheckpointError(f"{reader.source}: tensor '{key}' is also stored in "
                                      f"{self._where[key].source.name}; expected each key in exactly one shard")
            self._where[key] = reader

    def _open_shards(self, index_path: Path) -> None:
        index = read_index(index_path)
        by_shard = {}
        for name, file in index.files.items():
            reader = CheckpointReader(file)
            self._add(reader)
            by_shard[name] = set(reader.keys())
        claimed, held = set(index.weight_map), set(self._where)
        if claimed == held:  # each key in the shard the index names
            for name, keys in by_shard.items():
                index.check_shard(name, keys)
            return
        claimed = {k.split("/", 1)[1] if "/" in k else k for k in claimed}  # Transformers' TF index: scoped names
        if missing := sorted(claimed - held):
            raise CheckpointError(f"{index_path}: {len(missing)} tensor(s) in the index are in no shard: "
                                  f"{', '.join(missing[:10])}")
        if extra := sorted(held - claimed):
            raise CheckpointError(f"{index_path}: shards hold {len(extra)} tensor(s) the index does not list: "
                                  f"{', '.join(extra[:10])}")

    @property
    def metadata(self) -> dict[str, str]:
        """Header metadata of the first file (``{"format": "pt"}`` and the like)."""
        first = min(self._readers)
        return self._readers[first].metadata

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].shape(key))

    def dtype(self, key: str) -> str:
        return self._where[key].dtype(key)

    def _mapped(self, path: Path) -> tuple[np.memmap, int, dict[str, Any]]:
        """The file mapped read-only, where its data starts, and its header (parsed once per file)."""
        if path not in self._maps:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            self._maps[path] = (np.memmap(path, dtype=np.uint8, mode="r"), 8 + n, header)
        return self._maps[path]

    def get(self, key: str) -> np.ndarray:
        """A read-only view into the memory-mapped file: no copy (bf16 / fp8 through ml_dtypes)."""
        reader = self._where[key]
        data, start, header = self._mapped(Path(reader.source))
        info = header[key]
        begin, end = info["data_offsets"]
        dtype = numpy_dtype(info["dtype"]).newbyteorder("<")  # safetensors is little-endian
        return data[start + begin:start + end].view(dtype).reshape(info["shape"])

    def get_tensor(self, key: str, framework: str) -> Any:
        """The tensor in ``framework`` ("pt", "tf", "flax"), memory-mapped where safetensors can."""
        return self._where[key].get(key, framework)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._maps.clear()  # arrays handed out keep their mapping alive


class BinSource:
    """``pytorch_model.bin`` or its shards (a pickle: loaded with ``weights_only=True``; needs torch)."""

    def __init__(self, folder: Path):
        from conversion.pt_bin import read_pytorch_bin

        self.source = folder
        self._state = read_pytorch_bin(folder)

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> str:
        return _torch_code(self._state[key].dtype)

    def get(self, key: str) -> np.ndarray:
        return torch_to_numpy(self._state[key])

    def get_tensor(self, key: str, framework: str) -> Any:
        if framework == "pt":
            return self._state[key]
        return from_numpy(self.get(key), framework)

    def close(self) -> None:
        self._state = {}


def _torch_code(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_CODES:
        raise CheckpointError(f"torch dtype {dtype} has no safetensors code")
    return DTYPE_CODES[name]


def torch_to_numpy(t: Any) -> np.ndarray:
    """A CPU torch tensor as numpy, bitwise (bf16 through a 16-bit view: numpy has no bf16)."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype("BF16"))
    return t.numpy()


def from_numpy(a: np.ndarray, framework: str) -> Any:
    """A numpy array as a tensor of ``framework`` ("np", "pt", "tf", "flax"), bf16 kept bitwise."""
    if framework == "np":
        return a
    if framework == "pt":
        import torch

        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # torch tensors are writable: never alias read-only (mapped) memory
            a = a.copy()
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    if framework == "tf":
        import tensorflow as tf

        return tf.convert_to_tensor(a)
    if framework == "flax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    raise ValueError(f"framework must be one of np, pt, tf, flax; got {framework!r}")


class H5Source:
    """Transformers' ``tf_model.h5`` (or shards); keys are table TF names (no scope, no ``:0``)."""

    def __init__(self, folder: Path):
        from conversion.tf_h5 import TFH5Reader

        self.source = folder
        self._reader = TFH5Reader(folder)

    def keys(self) -> list[str]:
        return self._reader.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self._reader.shape(key)

    def dtype(self, key: str) -> str:
        return dtype_code(self._reader.dtype(key))

    def get(self, key: str) -> np.ndarray:
        return self._reader.get(key)

    def close(self) -> None:
        self._reader.close()


class MsgpackSource:
    """Transformers' ``flax_model.msgpack`` (or shards), flattened to "/"-joined paths (read whole: msgpack has no index)."""

    def __init__(self, folder: Path):
        from conversion.flax_msgpack import read_flax_msgpack

        self.source = folder
        self._flat = read_flax_msgpack(folder)

    def keys(self) -> list[str]:
        return list(self._flat)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._flat[key].shape)

    def dtype(self, key: str) -> str:
        return dtype_code(self._flat[key].dtype)

    def get(self, key: str) -> np.ndarray:
        return self._flat[key]

    def close(self) -> None:
        self._flat = {}


class Source:
    """A checkpoint seen through canonical names and layouts, lazily.

    ``shapes`` maps each canonical name to its canonical shape; a stored key that no table
    row translates keeps its stored name (listed in ``unknown``), so a loading report can
    name it. ``get`` returns numpy; ``get_tensor`` a framework tensor (memory-mapped from
    canonical safetensors, the very tensor from a ``.bin``).
    """

    def __init__(self, folder: Path, fmt: str, raw: Any, tables: Sequence[Sequence[Param]]):
        self.folder, self.format, self._raw = folder, fmt, raw
        self._where: dict[str, tuple[str, str]] = {}  # canonical name -> (stored key, op to invert)
        self.unknown: list[str] = []
        by_key: dict[str, Param] = {}
        if fmt not in ("pt", "bin"):
            for table in reversed(tables):  # the first table wins
                by_key.update({stored_name(p, fmt): p for p in table})
        self.shapes: dict[str, tuple[int, ...]] = {}
        for key in raw.keys():
            p = by_key.get(key if fmt != "tf" or key.endswith(":0") else key + ":0")
            name, op = (p.pt, framework_op(p, fmt)) if p is not None else (key, "identity")
            if p is None and fmt not in ("pt", "bin"):
                self.unknown.append(key)
            shape = raw.shape(key)
            if op != "identity":  # the canonical shape, from a zero-stride view (no data read)
                shape = apply_op(op, np.broadcast_to(np.zeros((), np.int8), shape), inverse=True).shape
            self._where[name] = (key, op)
            self.shapes[name] = tuple(int(d) for d in shape)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def stored_key(self, name: str) -> str:
        return self._where[name][0]

    def dtype(self, name: str) -> str:
        """Safetensors dtype code ("F32", "BF16", ...) of ``name``."""
        return self._raw.dtype(self._where[name][0])

    def get(self, name: str) -> np.ndarray:
        """``name`` as a numpy array in canonical layout (a view where the op allows)."""
        key, op = self._where[name]
        a = self._raw.get(key)
        return a if op == "identity" else apply_op(op, a, inverse=True)

    def get_tensor(self, name: str, framework: str) -> Any:
        """``name`` as a tensor of ``framework`` ("np", "pt", "tf", "flax")."""
        key, op = self._where[name]
        if op == "identity" and framework != "np" and hasattr(self._raw, "get_tensor"):
            return self._raw.get_tensor(key, framework)
        return from_numpy(self.get(name), framework)


def h5_scope(folder: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """(model scope, keras_version) recorded in a ``tf_model.h5`` (or its shard index), to write them back alike."""
    import h5py

    from conversion.tf_h5 import TF_WEIGHTS_INDEX_NAME, TF_WEIGHTS_NAME, read_names

    folder = Path(folder)
    if (folder / TF_WEIGHTS_NAME).is_file():
        with h5py.File(folder / TF_WEIGHTS_NAME, "r") as f:
            version = f.attrs.get("keras_version")
            version = version.decode() if isinstance(version, bytes) else version
            for layer in read_names(f, "layer_names"):
                names = read_names(f[layer], "weight_names") if layer in f else []
                if names and "/" in names[0]:
                    return names[0].split("/", 1)[0], version
            return None, version
    index = json.loads((folder / TF_WEIGHTS_INDEX_NAME).read_text())
    first = next(iter(index.get("weight_map", {})), "")
    return (first.split("/", 1)[0] if "/" in first else None), None


__all__ = ["Source", "SafetensorsSource", "BinSource", "H5Source", "MsgpackSource", "numpy_dtype", "dtype_code",
           "torch_to_numpy", "from_numpy", "h5_scope", "DTYPE_CODES"]
