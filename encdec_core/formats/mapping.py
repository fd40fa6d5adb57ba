"""Canonical arrays <-> a framework's named arrays, through the core weight tables.

The canonical layout is HF PyTorch's: ``state_dict`` names and ``(out, in)`` linear weights.
TensorFlow and Flax name and lay out the same weights differently; each :class:`Param` of a
core table carries both names and the op between the layouts. These two functions are the
only place where that op is applied, so every backend loader and saver and the converter
share one mapping.

>>> from encdec_core.configs import BertConfig
>>> from encdec_core.tables import model_table
>>> import numpy as np
>>> params = model_table(BertConfig(hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
...                                 intermediate_size=5, vocab_size=7), "encoder")
>>> w = np.arange(20, dtype=np.float32).reshape(4, 5)  # PT (out=4, in=5)
>>> tf = to_framework({"encoder.layer.0.intermediate.dense.weight": w.T}, params, "tf", missing="ignore")
>>> sorted(tf)
['bert/encoder/layer_._0/intermediate/dense/kernel']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np

from encdec_core.errors import CheckpointError
from encdec_core.tables import Param, apply_op

Framework = Literal["tf", "flax"]
A = TypeVar("A")


def _names(param: Param, framework: str) -> tuple[str, str]:
    if framework == "tf":
        return param.tf, param.tf_op
    if framework == "flax":
        return param.flax, param.flax_op
    raise ValueError(f"framework must be 'tf' or 'flax', got {framework!r}")


def _check_missing(missing: list[str], where: str, mode: str) -> None:
    if missing and mode == "raise":
        shown = ", ".join(missing[:20]) + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else "")
        raise CheckpointError(f"{where}: {len(missing)} weight(s) not found: {shown}")


def to_framework(
    arrays: Mapping[str, A],
    params: Sequence[Param],
    framework: Framework,
    *,
    missing: Literal["raise", "ignore"] = "raise",
    op: Callable[[str, A], A] | None = None,
) -> dict[str, A]:
    """Canonical (PT-named) arrays -> ``{framework name: array}`` with the table's ops applied.

    ``op(name, array)`` replaces the numpy op (a backend may pass its own, e.g. to transpose
    on device); by default :func:`encdec_core.tables.apply_op` is used.
    """
    out: dict[str, A] = {}
    absent = []
    for p in params:
        name, op_name = _names(p, framework)
        if p.pt not in arrays:
            absent.append(p.pt)
            continue
        a = arrays[p.pt]
        out[name] = op(op_name, a) if op is not None else apply_op(op_name, np.asarray(a))
    _check_missing(absent, f"canonical -> {framework}", missing)
    return out


def from_framework(
    arrays: Mapping[str, A],
    params: Sequence[Param],
    framework: Framework,
    *,
    missing: Literal["raise", "ignore"] = "raise",
    op: Callable[[str, A], A] | None = None,
) -> dict[str, A]:
    """``{framework name: array}`` -> canonical (PT-named) arrays, applying each op's inverse.

    ``op(name, array)``, if given, receives the *inverse* op's name.
    """
    from encdec_core.tables import OPS

    out: dict[str, A] = {}
    absent = []
    for p in params:
        name, op_name = _names(p, framework)
        if name not in arrays:
            absent.append(name)
            continue
        a = arrays[name]
        out[p.pt] = op(OPS[op_name].inverse, a) if op is not None else apply_op(op_name, np.asarray(a), inverse=True)
    _check_missing(absent, f"{framework} -> canonical", missing)
    return out


def unconsumed(arrays: Mapping[str, object], params: Sequence[Param], framework: str) -> list[str]:
    """Keys of ``arrays`` (framework-named) that no table row consumes."""
    known = {_names(p, framework)[0] for p in params}
    return sorted(k for k in arrays if k not in known)


__all__ = ["to_framework", "from_framework", "unconsumed"]
