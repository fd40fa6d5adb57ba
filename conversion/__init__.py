"""Checkpoint formats and conversion between PyTorch, TensorFlow and Flax layouts.

Modules here import a framework only inside the function that needs it, so importing
``conversion`` is cheap and framework-free.
"""

from conversion.pt_bin import read_pytorch_bin, write_pytorch_bin

__all__ = ["read_pytorch_bin", "write_pytorch_bin"]
