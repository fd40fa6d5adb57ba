"""Format names and the tables of a checkpoint kind: moved to :mod:`encdec_core.formats.naming` (below the backends).

Kept here so ``conversion.naming`` imports keep working.
"""

from __future__ import annotations

from encdec_core.formats.naming import (
    DECODER_ARCHS,
    FILES,
    FORMATS,
    KINDS,
    SAFETENSORS_FORMATS,
    Tables,
    container,
    describe,
    framework_op,
    stored_name,
    tables_for,
)

__all__ = [
    "FORMATS",
    "SAFETENSORS_FORMATS",
    "FILES",
    "KINDS",
    "DECODER_ARCHS",
    "Tables",
    "container",
    "describe",
    "tables_for",
    "stored_name",
    "framework_op",
]
