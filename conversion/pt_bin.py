"""PyTorch ``pytorch_model.bin``: moved to :mod:`encdec_core.formats.pt_bin` (below the backends, which read it).

Kept here so ``conversion.pt_bin`` imports keep working.
"""

from __future__ import annotations

from encdec_core.formats.pt_bin import read_pytorch_bin, write_pytorch_bin

__all__ = ["read_pytorch_bin", "write_pytorch_bin"]
