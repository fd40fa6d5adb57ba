"""Checkpoint formats, conversion between PyTorch, TensorFlow and Flax layouts, the parity checker and the CLI.

Modules here import a framework only inside the function that needs it, so importing
``conversion`` is cheap and framework-free.

>>> from conversion import convert, detect  # doctest: +SKIP
>>> detect("bert2gpt2").format  # doctest: +SKIP
'pt'
>>> convert("bert2gpt2", "bert2gpt2-tf", to="h5")  # doctest: +SKIP
"""

from conversion.formats import FORMATS, convert, detect, open_source, read_canonical
from conversion.parity import PARITY_ATOL, PARITY_RTOL, ParityReport, check_parity
from conversion.pt_bin import read_pytorch_bin, write_pytorch_bin

__all__ = [
    "FORMATS",
    "convert",
    "detect",
    "open_source",
    "read_canonical",
    "check_parity",
    "ParityReport",
    "PARITY_ATOL",
    "PARITY_RTOL",
    "read_pytorch_bin",
    "write_pytorch_bin",
]
