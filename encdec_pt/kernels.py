"""Linear layers for decode steps: oneDNN with the weight prepacked once, or MKL weight-first (CPU, fp32, few rows).

A decode step multiplies a few rows (batch x beams) by every weight matrix once, so its time
is the time to stream the weights from memory. ``F.linear`` (MKL ``addmm``) on 4 rows moves
weights at well under the machine's read bandwidth; oneDNN's inner-product kernel with the
weight reordered once into its blocked layout (``mkldnn._reorder_linear_weight``) streams it
close to that bandwidth (measured in ``benchmarks/``, with ``shared/tools/decode_floor.py``).

Measured per weight shape (``benchmarks/RESULTS.md``, ``benchmarks/rows.py``): with 4 or more rows
oneDNN is up to twice as fast as MKL, with fewer packing does not pay (on an Intel Xeon MKL streamed
1 to 3 rows at the bandwidth). On an AMD EPYC ``F.linear`` read a base decoder's weights at only 6-9
GB/s with 2 to 4 rows, while the same product taken weight-first, ``(W @ x.T).T``, read them at
11-16 GB/s on one thread and 22-28 GB/s on two, with no packing; so unpacked calls of 2 to 4 rows
(``FEW_ROWS``) of an ``(out, in)`` weight run that way (GPT-2's ``(in, out)`` Conv1D gains nothing
from it).

Packing costs about one pass over the weights, a few decode steps' worth, so ``generate`` enters the
packed scope only from its ``PACK_AFTER``-th decoder call on (:func:`packed_after`): a short
generation never pays for copies it cannot amortise. When the call is sure to make that many decoder
calls (no EOS, or ``min_new_tokens`` at least that), it packs before the first. Many calls on
unchanged weights (a serving loop) can share one packing: wrap them in ``with packed_weights():``,
which keeps the copies until the block ends (edit weights through ``.data`` only outside it: see
below).

The packed path is active only inside :func:`packed_weights` (``generate`` enters it): there a
layer's packed copy is made on first use and kept beside the module (not a parameter or
buffer: ``state_dict`` and checkpoints are unchanged), and every copy is dropped on exit.
Scoping it to one call is what makes it safe: code that edits weights through ``.data``
(PEFT's ``merge_and_unload``, for one) does not bump a tensor's version, so a copy kept
across calls could go stale unseen. Neither path is used where autograd needs the weight,
under ``torch.compile``, off the CPU, or for other dtypes. Both sum in
another order than ``F.linear``: outputs differ from it by rounding (~1e-6 relative), which the
fixtures' ids and the 1e-5 parity tolerance hold. During the call the packed copies cost as
much memory as the weights they serve; ``set_packed_linear(False)`` (or
``ENCDEC_PACKED_LINEAR=0``) turns both paths off.

>>> import torch
>>> w, x, layer = torch.randn(7, 5), torch.randn(4, 5), torch.nn.Module()
>>> with torch.no_grad(), packed_weights():
...     y = linear(x, w, None, owner=layer)
...     kept = "_packed_weight" in layer.__dict__
>>> kept, "_packed_weight" in layer.__dict__, bool(torch.allclose(y, x @ w.T, atol=1e-5))
(True, False, True)
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 64  # above this a GEMM is compute-bound and MKL's addmm is as fast
MIN_ROWS = 4  # below this packing does not pay (2 and 3 rows run weight-first: FEW_ROWS)
FEW_ROWS = (2, 4)  # unpacked calls of this many rows run as W @ x.T (see _weight_first)
PACK_AFTER = 8  # decoder calls of a generate before its weights are packed (packing costs ~ a few steps)
_STATE = {"enabled": os.environ.get("ENCDEC_PACKED_LINEAR", "1") != "0"}
_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_SCOPE = threading.local()  # .owners: the modules holding a packed copy in the current scope, or None


def set_packed_linear(enabled: bool) -> None:
    """Turn the prepacked decode-step path on or off for the whole process."""
    _STATE["enabled"] = bool(enabled)


def packed_linear_enabled() -> bool:
    return _STATE["enabled"] and _AVAILABLE


@contextlib.contextmanager
def packed_weights() -> Iterator[None]:
    """Within this block eligible linear layers run on packed copies; on exit the copies are dropped."""
    if getattr(_SCOPE, "owners", None) is not None or not packed_linear_enabled():  # nested, or off
        yield
        return
    _SCOPE.owners = []
    try:
        yield
    finally:
        for owner in _SCOPE.owners:
            owner.__dict__.pop("_packed_weight", None)
        _SCOPE.owners = None


@contextlib.contextmanager
def packed_after(calls: int | None = None, *, sure: int = 0) -> Iterator[Callable[[], None]]:
    """Yields ``tick()``, to call once per decoder call: :func:`packed_weights` is entered at the ``calls``-th
    (default :data:`PACK_AFTER`), or at the first when the caller is ``sure`` to make at least that many
    calls (generation without EOS, or with ``min_new_tokens``): then waiting only costs unpacked steps."""
    calls = PACK_AFTER if calls is None else calls
    calls = 1 if sure >= calls else calls
    with contextlib.ExitStack() as stack:
        count = [0]

        def tick() -> None:
            count[0] += 1
            if count[0] == calls:
                stack.enter_context(packed_weights())

        yield tick


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if (
        getattr(_SCOPE, "owners", None) is None
        or not _STATE["enabled"]
        or not _AVAILABLE
        or torch.compiler.is_compiling()
    ):
        return False
    if (
        x.device.type != "cpu"
        or weight.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
    ):
        return False
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        return False
    return MIN_ROWS * x.shape[-1] <= x.numel() <= MAX_ROWS * x.shape[-1]


def _packed(owner: nn.Module, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The oneDNN copy of ``weight`` (out, in), made once per weight version and kept on ``owner``."""
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), transposed)
    slot = owner.__dict__.get("_packed_weight")
    if slot is None or slot[0] != key:
        w = weight.detach()
        w = w.t().contiguous() if transposed else w.contiguous()  # oneDNN wants (out, in)
        slot = (key, torch.ops.mkldnn._reorder_linear_weight(w, 4))
        if "_packed_weight" not in owner.__dict__:
            _SCOPE.owners.append(owner)
        owner.__dict__["_packed_weight"] = slot
    return slot[1]


def _few_rows(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Unpacked calls of ``FEW_ROWS`` rows on the CPU in fp32 without autograd, on the fast path, not compiled."""
    if not _STATE["enabled"] or torch.compiler.is_compiling():
        return False
    if not FEW_ROWS[0] * x.shape[-1] <= x.numel() <= FEW_ROWS[1] * x.shape[-1]:
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    return not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))


def _weight_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + b`` computed as ``(W @ x.T + b).T``: MKL streams an (out, in) weight faster that way."""
    flat = x.reshape(-1, x.shape[-1]).t()  # (in, N)
    y = weight @ flat if bias is None else torch.addmm(bias[:, None], weight, flat)  # (out, N)
    return y.t().contiguous().view(*x.shape[:-1], -1)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, owner: nn.Module, transposed: bool = False
) -> torch.Tensor:
    """``x @ W.T + b`` (``x @ W + b`` with ``transposed=True``, GPT-2's Conv1D layout), prepacked when eligible."""
    if _eligible(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, _packed(owner, weight, transposed), bias, "none", [], "")
    if not transposed and _few_rows(x, weight):
        return _weight_first(x, weight, bias)
    if transposed:  # what HF's Conv1D computes, so the unpacked path keeps its exact numerics
        flat = x.reshape(-1, x.shape[-1])
        y = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
        return y.view(*x.shape[:-1], -1)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` with the prepacked decode-step path; same parameters and ``state_dict`` names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, owner=self)


__all__ = [
    "Linear",
    "linear",
    "packed_weights",
    "packed_after",
    "set_packed_linear",
    "packed_linear_enabled",
    "MAX_ROWS",
    "MIN_ROWS",
    "PACK_AFTER",
]
