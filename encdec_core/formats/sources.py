"""Raw weight files of every format behind one interface, and :class:`Source`: canonical names over any of them.

One small class per container: safetensors (``model.safetensors`` or shards, whatever the
metadata format: "pt", "tf" or "flax"), ``pytorch_model.bin`` (single or sharded),
``tf_model.h5`` (single or sharded) and ``flax_model.msgpack`` (single or sharded). Each has
``keys()``, ``shape(key)``, ``dtype(key)`` (a safetensors dtype code: "F32", "BF16", ...),
``get(key)`` (a numpy array; bf16/fp8 through ``ml_dtypes``) and ``close()``. Keys are the
names as stored. :class:`Source` puts one of them behind canonical names and layouts through
the tables (:mod:`encdec_core.formats.naming`). torch and h5py are imported inside the
functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encdec_core.errors import CheckpointError, InputError
from encdec_core.formats.dtypes import dtype_code, numpy_dtype
from encdec_core.formats.naming import framework_op, stored_name
from encdec_core.formats.safetensors_io import CheckpointReader
from encdec_core.formats.shards import read_index
from encdec_core.tables import Param, apply_op


class SafetensorsSource:
    """Safetensors weights: one file, or shards listed by ``model.safetensors.index.json``.

    Transformers' TF classes write a shard index whose keys keep the model scope
    (``tf_encoder_decoder_model/encoder/...:0``) while the shards hold scope-free keys; such
    an index is matched to its shards with the first path segment dropped.
    """

    def __init__(self, folder: Path, single: Path | None, index_path: Path | None):
        self.source = folder
        self._readers: dict[Path, CheckpointReader] = {}  # one per file: headers parsed once, there
        self._where: dict[str, CheckpointReader] = {}
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
                raise CheckpointError(
                    f"{reader.source}: tensor '{key}' is also stored in "
                    f"{self._where[key].source.name}; expected each key in exactly one shard"
                )
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
            raise CheckpointError(
                f"{index_path}: {len(missing)} tensor(s) in the index are in no shard: {', '.join(missing[:10])}"
            )
        if extra := sorted(held - claimed):
            raise CheckpointError(
                f"{index_path}: shards hold {len(extra)} tensor(s) the index does not list: {', '.join(extra[:10])}"
            )

    @property
    def metadata(self) -> dict[str, str]:
        """Header metadata of the first file (``{"format": "pt"}`` and the like)."""
        return self._readers[min(self._readers)].metadata

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].shape(key))

    def dtype(self, key: str) -> str:
        return self._where[key].dtype(key)

    def get(self, key: str) -> np.ndarray:
        """A read-only view into the memory-mapped file: no copy (bf16 / fp8 through ml_dtypes)."""
        return self._where[key].view(key)

    def get_tensor(self, key: str, framework: str) -> Any:
        """The tensor in ``framework`` ("pt", "tf", "flax"), memory-mapped where safetensors can."""
        return self._where[key].get(key, framework)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()


class BinSource:
    """``pytorch_model.bin`` or its shards (a pickle: loaded with ``weights_only=True``; needs torch)."""

    def __init__(self, folder: Path):
        from encdec_core.formats.pt_bin import read_pytorch_bin

        self.source = folder
        self._state = read_pytorch_bin(folder)

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> str:
        return dtype_code(self._state[key].dtype)

    def get(self, key: str) -> np.ndarray:
        return torch_to_numpy(self._state[key])

    def get_tensor(self, key: str, framework: str) -> Any:
        if framework == "pt":
            return self._state[key]
        return from_numpy(self.get(key), framework)

    def close(self) -> None:
        self._state = {}


def torch_to_numpy(t: Any) -> np.ndarray:
    """A CPU torch tensor as numpy, bitwise (bf16 through a 16-bit view: numpy has no bf16)."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype("BF16"))
    return t.numpy()


def from_numpy(a: np.ndarray, framework: str) -> Any:
    """A numpy array as a tensor of ``framework`` ("np" or "pt"), bf16 kept bitwise.

    TF and Flax loaders take numpy (their frameworks convert it); torch is imported here
    only because ``.bin`` files and the PyTorch loader hold torch tensors.
    """
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
    raise InputError(f"framework must be 'np' or 'pt' (TF and Flax take numpy arrays), got {framework!r}")


class H5Source:
    """Transformers' ``tf_model.h5`` (or shards); keys are table TF names (no scope, no ``:0``)."""

    def __init__(self, folder: Path):
        from encdec_core.formats.tf_h5 import TFH5Reader

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
        from encdec_core.formats.flax_msgpack import read_flax_msgpack

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
        """``name`` as a tensor of ``framework`` ("np", "pt"; "tf" and "flax" from safetensors files)."""
        key, op = self._where[name]
        if op == "identity" and framework != "np" and hasattr(self._raw, "get_tensor"):
            return self._raw.get_tensor(key, framework)
        return from_numpy(self.get(name), framework)


__all__ = ["Source", "SafetensorsSource", "BinSource", "H5Source", "MsgpackSource", "torch_to_numpy", "from_numpy"]
