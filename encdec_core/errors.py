"""The error hierarchy of encdec.

Every error a user can cause derives from :class:`EncdecError`, and each message names the
file, key or argument concerned, what was expected and what came.  The subclasses also
derive from the built-in exception a caller would naturally catch (``ValueError`` for bad
values, ``OSError`` for files), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class EncdecError(Exception):
    """Base class of every error raised by encdec."""


class ConfigError(EncdecError, ValueError):
    """A configuration is malformed, has a wrongly typed field or an impossible combination."""


class CheckpointError(EncdecError, OSError):
    """A checkpoint is missing, unreadable, corrupted or does not fit the model."""


class ShapeMismatchError(CheckpointError):
    """A tensor in a checkpoint has a shape that does not fit the model's weight."""


class InputError(EncdecError, ValueError):
    """An argument of a call (ids, masks, labels, generation options) is invalid."""


class ArgumentError(InputError, TypeError):
    """A call got an argument it does not take, or one twice (a ``TypeError`` too, as Python's own)."""


class GenerationError(InputError):
    """Generation cannot proceed with the given options (e.g. no start token is known)."""


__all__ = [
    "EncdecError",
    "ConfigError",
    "CheckpointError",
    "ShapeMismatchError",
    "InputError",
    "ArgumentError",
    "GenerationError",
]
