"""The one place where numeric tolerances live (see DESIGN.md, "Numerics policy").

Absolute tolerances per dtype for comparing our outputs with a reference computed on the
same weights. fp32: 1e-5 for tiny fixtures (we measure ~5e-7 on logits against
Transformers 4.57, so a real bug, e.g. a dropped bias at 0.05 noise, is far outside).
Generated ids must be equal: no tolerance. Never raise these to make a test pass.
"""

import numpy as np

ATOL = {
    "float32": 1e-5,  # logits, loss, hidden states, attentions against a reference
    "bfloat16": 5e-2,  # bf16 storage of fp32 weights: 8 bits of mantissa
    "float16": 5e-3,
}
# Relative to an output's max |reference| (as numpy.allclose, on the output's scale), for real
# weights whose activations reach ~10: all-MiniLM-L6-v2 as bert2bert differs by up to 7e-6 of its
# scale between frameworks (fp32 rounding). The tiny fixtures are judged by ATOL alone.
RTOL = {"float32": 1e-5}
GRAD_ATOL = {"float32": 1e-5}  # gradients of the same weights and batch


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference shape {b.shape}"
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_close(actual, expected, *, dtype: str = "float32", what: str = "") -> float:
    """Assert max |actual - expected| <= ATOL[dtype]; return the difference for reporting."""
    diff = max_abs_diff(actual, expected)
    assert diff <= ATOL[dtype], f"{what}: max abs diff {diff:.3e} > {ATOL[dtype]:.0e} ({dtype})"
    return diff


# parameters after a few AdamW steps on 2 ranks vs 1 process (same global batch): only
# the order of the gradient sum differs
DIST_PARAM_ATOL = 1e-6
