"""Weight-table rows: the kinds of modules, their leaves in PT / TF / Flax, and the ops between layouts.

See :mod:`encdec_core.tables` for what a table is; :mod:`encdec_core.architectures` declares the rows
of each architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Op(NamedTuple):
    """An array operation with its inverse (by name), applied PT -> other framework."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    inverse: str


OPS: dict[str, Op] = {
    "identity": Op("identity", lambda a: a, "identity"),
    "transpose": Op("transpose", lambda a: a.T, "transpose"),  # (out, in) <-> (in, out)
    "add_axis0": Op("add_axis0", lambda a: a.reshape((1, *a.shape)), "squeeze_axis0"),  # (n,) -> (1, n)
    "squeeze_axis0": Op("squeeze_axis0", lambda a: a.reshape(a.shape[1:]), "add_axis0"),
}


def apply_op(name: str, array: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Apply the op ``name`` (or its inverse) to a numpy array."""
    op = OPS[name]
    return OPS[op.inverse].apply(array) if inverse else op.apply(array)


# kind -> [(pt leaf, tf leaf, flax leaf, op PT->TF, op PT->Flax)]
KINDS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "linear": [
        ("weight", "kernel", "kernel", "transpose", "transpose"),
        ("bias", "bias", "bias", "identity", "identity"),
    ],
    "conv1d": [
        ("weight", "weight", "kernel", "identity", "transpose"),
        ("bias", "bias", "bias", "add_axis0", "identity"),
    ],
    "layernorm": [
        ("weight", "gamma", "scale", "identity", "identity"),
        ("bias", "beta", "bias", "identity", "identity"),
    ],
    "embedding": [("weight", "embeddings", "embedding", "identity", "identity")],
    # BERT's TF word embedding is a bare variable named "weight"
    "embedding_w": [("weight", "weight", "embedding", "identity", "identity")],
    # a lone parameter whose name is the row's path (e.g. the LM head's output bias)
    "param": [("", "", "", "identity", "identity")],
    # an LM output projection kept apart from the embeddings (tie_word_embeddings=false)
    "linear_nobias": [("weight", "kernel", "kernel", "transpose", "transpose")],
}
# Which of a row's ``dims`` size each leaf of its kind, in PT layout (as KINDS lists the leaves):
# a linear weight is (out, in), its bias (out,); a GPT-2 Conv1D weight is (in, out).
LEAF_DIMS: dict[str, list[tuple[int, ...]]] = {
    "linear": [(0, 1), (0,)],
    "conv1d": [(0, 1), (1,)],
    "layernorm": [(0,), (0,)],
    "embedding": [(0, 1)],
    "embedding_w": [(0, 1)],
    "param": [(0,)],
    "linear_nobias": [(0, 1)],
}


@dataclass(frozen=True)
class Row:
    """One module: PT path, kind, optional TF/Flax paths, group, and whether per layer."""

    pt: str
    kind: str
    tf: str | None = None
    flax: str | None = None
    group: str = "base"  # base | cross | pooler | head | proj: decides what is expected new
    # config sizes giving the row's PT shape, by the configs' vocabulary ("vocab_size", "hidden_size"):
    # (out, in) for linear, (in, out) for conv1d, (rows, width) for embeddings, (n,) for norms and params.
    # Rows without them (attention projections, whose widths depend on the pairing) are not pre-checked.
    dims: tuple[str, ...] = ()
    # a config property that must be true for the row to exist ("token_types", "relative_attention", ...)
    when: str = ""

    def tf_path(self) -> str:
        if self.tf is not None:
            return self.tf
        return "/".join(self.pt.split(".")).replace("/{i}", "_._{i}")

    def flax_path(self) -> str:
        return self.flax if self.flax is not None else self.pt.replace(".", "/")


@dataclass(frozen=True)
class Param:
    """One weight, with its name in each framework and the ops between them."""

    pt: str  # canonical name (HF PyTorch state_dict)
    tf: str  # HF TF variable name, without the model scope and ":0"
    flax: str  # HF Flax parameter path, "/"-joined
    tf_op: str  # op turning the PT array into the TF one
    flax_op: str  # op turning the PT array into the Flax one
    group: str
    dims: tuple[str, ...] = ()  # config sizes giving the PT shape (see Row.dims); () if not declared


@dataclass(frozen=True)
class Tie:
    """A PT weight that is the same tensor as another (not stored in the checkpoint)."""

    pt: str
    source: str
    flag: str  # the config flag that enables the tie


def _join(prefix: str, path: str, sep: str) -> str:
    return f"{prefix}{sep}{path}" if prefix and path else prefix or path


def expand(rows: list[Row], n_layers: int, prefixes: tuple[str, str, str] = ("", "", "")) -> list[Param]:
    """Rows -> concrete params; ``{i}`` rows repeat for each layer; prefixes (pt, tf, flax)."""
    out: list[Param] = []
    for row in rows:
        layers = range(n_layers) if "{i}" in row.pt else [None]
        for i in layers:

            def fmt(s: str, i=i) -> str:
                return s if i is None else s.replace("{i}", str(i))

            for leaf, (pt_leaf, tf_leaf, fx_leaf, tf_op, fx_op) in enumerate(KINDS[row.kind]):
                out.append(
                    Param(
                        pt=_join(_join(prefixes[0], fmt(row.pt), "."), pt_leaf, "."),
                        tf=_join(_join(prefixes[1], fmt(row.tf_path()), "/"), tf_leaf, "/"),
                        flax=_join(_join(prefixes[2], fmt(row.flax_path()), "/"), fx_leaf, "/"),
                        tf_op=tf_op,
                        flax_op=fx_op,
                        group=row.group,
                        dims=tuple(row.dims[j] for j in LEAF_DIMS[row.kind][leaf]) if row.dims else (),
                    )
                )
    return out


__all__ = ["Op", "OPS", "apply_op", "KINDS", "LEAF_DIMS", "Row", "Param", "Tie", "expand"]
