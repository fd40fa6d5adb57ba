"""Canonical arrays <-> a framework's named arrays: moved to :mod:`encdec_core.formats.mapping` (below the backends).

Kept here so ``conversion.mapping`` imports keep working.
"""

from __future__ import annotations

from encdec_core.formats.mapping import from_framework, to_framework, unconsumed

__all__ = ["to_framework", "from_framework", "unconsumed"]
