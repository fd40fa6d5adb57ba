"""JSON files of a checkpoint (configs, shard indexes): written as Transformers does, atomically; read with clear errors.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "config.json"
>>> write_json(path, {"b": 1, "a": 2}); path.read_text()
'{\\n  "a": 2,\\n  "b": 1\\n}\\n'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from encdec_core.errors import CheckpointError, EncdecError
from encdec_core.formats.atomic import atomic_write_file


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as Transformers does (sorted keys, indent 2, trailing newline), atomically."""
    atomic_write_file(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: type[EncdecError] = CheckpointError,
    unique_keys: bool = False,
) -> Any:
    """Parse the JSON file ``path`` (a ``what``: "config", "checkpoint index", ...).

    Raises ``error`` naming the file and, for a syntax error, its line and column;
    ``unique_keys`` refuses an object holding the same key twice (JSON would keep the last).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path}: cannot be read as UTF-8 text: {e}") from e
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs if unique_keys else None)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except RecursionError:
        raise error(f"{what} {path}: JSON nested too deeply to be a checkpoint file") from None
    except _DuplicateKey as e:
        raise error(
            f"{what} {path}: key '{e}' appears twice in one JSON object; "
            "expected each key once (a tensor belongs to one shard)"
        ) from e


__all__ = ["write_json", "read_json"]
