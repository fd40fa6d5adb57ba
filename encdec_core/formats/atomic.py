"""Atomic writes: files and whole checkpoint folders, and what an interrupted save leaves behind.

A save writes a fresh temporary folder beside the destination, then swaps it in with one
``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames), so the destination always holds
a complete checkpoint, old or new. Recovery from a killed save belongs to the writer: the
next :func:`atomic_write_dir` into the folder (or an explicit :func:`recover_interrupted`)
cleans up. Readers never rename or delete anything; they call :func:`check_interrupted`,
which only looks, warns about leftovers and raises if the folder itself is gone.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp()) / "model"
>>> with atomic_write_dir(folder) as tmp:
...     atomic_write_file(tmp / "config.json", b"{}")
>>> sorted(p.name for p in folder.iterdir()), interrupted_leftovers(folder)
(['config.json'], [])
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import logging
import os
import re
import shutil
import socket
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from encdec_core.errors import CheckpointError, EncdecError

logger = logging.getLogger("encdec")

# Aside name of the old folder during a non-Linux swap; fixed so recover_interrupted finds it.
_ASIDE_SUFFIX = ".encdec-old"
_STALE_TEMP = re.compile(r"\..+\.tmp-[0-9a-f]{8}")  # left by a killed atomic_output
# Temporary folders carry host and pid, so a later save can tell a killed save's leftovers
# (possibly a whole old checkpoint, left by a kill just after the exchange) from a live one.
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
# Same list as shards.WEIGHT_FILE_PATTERNS (kept here so this module stands alone): not carried over.
_OWNED = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin*",
    "tf_model*.h5*",
    "flax_model*.msgpack*",
    "config.json",
    "generation_config.json",
)


def _fsync(path: str | os.PathLike[str]) -> None:
    """Flush a file or folder to disk (folders cannot be opened on Windows: skipped there)."""
    if os.name == "nt" and os.path.isdir(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    For writers that want a file name (``torch.save``, ``serialize_file``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync(path.parent)


def atomic_write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never half of one."""
    with atomic_output(path) as tmp:
        # os.open with 0o666 honours the umask (mkstemp's 0o600 would leak into the result).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{_ASIDE_SUFFIX}")


def _temp_pattern(folder: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(folder.name)}\.tmp-{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}")


def _pid_dead(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a liveness probe on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive under another user, or unknowable
    return False


def _dead_temps(folder: Path) -> list[Path]:
    """Temporary folders of saves into ``folder`` whose process died on this host."""
    pattern = _temp_pattern(folder)
    try:
        entries = list(os.scandir(folder.parent))
    except OSError:
        return []
    found = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir(follow_symlinks=False) and _pid_dead(int(m.group(1))):
            found.append(Path(entry.path))
    return sorted(found)


def interrupted_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """What killed saves into ``folder`` left behind; looks only, changes nothing.

    The aside copy of a non-Linux swap, temporary folders of dead saves beside ``folder``,
    and half-written temporary files inside it.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    found = [_aside(folder)] if os.path.lexists(_aside(folder)) else []
    found += _dead_temps(folder)
    with contextlib.suppress(OSError):
        if folder.is_dir():
            found += sorted(folder / n for n in os.listdir(folder) if _STALE_TEMP.fullmatch(n))
    return found


_warned: set[tuple[str, tuple[str, ...]]] = set()


def check_interrupted(folder: str | os.PathLike[str]) -> list[Path]:
    """Say (one warning per folder and process) if ``folder`` holds leftovers of an interrupted save.

    Raises :class:`CheckpointError` when the checkpoint itself is unusable: ``folder`` is gone
    and only the aside copy of a killed save is left. Returns the leftovers found.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    found = interrupted_leftovers(folder)
    if not found:
        return found
    if not os.path.lexists(folder) and _aside(folder) in found:
        raise CheckpointError(
            f"{folder}: no such folder, but a save into it was interrupted and left the previous "
            f"checkpoint at {_aside(folder)}; restore it with "
            f"encdec_core.checkpoint.recover_interrupted({str(folder)!r}) (or save into the folder again)"
        )
    key = (str(folder), tuple(p.name for p in found))
    if key not in _warned:
        _warned.add(key)
        logger.warning(
            "%s: holds leftovers of an interrupted save (%s); the checkpoint in the folder is complete and "
            "is loaded as is; the next save into it, or encdec_core.checkpoint.recover_interrupted(), removes them",
            folder,
            ", ".join(p.name for p in found),
        )
    return found


def recover_interrupted(folder: str | os.PathLike[str]) -> bool:
    """Undo what killed saves left (an explicit call, or the next save does it); True if a folder came back.

    If ``folder`` is missing but its aside copy exists, the aside copy is the complete old
    checkpoint: rename it back. If both exist the swap finished: the aside copy is garbage.
    Temporary folders of dead saves are deleted too.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    for tmp in _dead_temps(folder):
        shutil.rmtree(tmp, ignore_errors=True)
    aside = _aside(folder)
    if not os.path.lexists(aside):
        return False
    if not os.path.lexists(folder):
        os.rename(aside, folder)
        _fsync(folder.parent)
        return True
    shutil.rmtree(aside, ignore_errors=True)
    return False


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False if unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel or fs lacks it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no data copied; the old folder is deleted right after
    except FileNotFoundError:
        pass  # a concurrent save replaced the folder meanwhile: nothing left to carry
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path) -> None:
    """Bring the user's files (tokenizer, README, ...) from ``old`` into ``new``."""
    try:
        entries = list(os.scandir(old))
    except FileNotFoundError:  # a concurrent save swapped it away
        return
    for entry in entries:
        dst = new / entry.name
        owned = any(fnmatch.fnmatchcase(entry.name, p) for p in _OWNED)
        if os.path.lexists(dst) or owned or _STALE_TEMP.fullmatch(entry.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), dst)
            elif entry.is_dir():
                shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, str(dst))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                _fsync(path)
        _fsync(dirpath)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp`` so that ``folder`` is always a complete checkpoint."""
    old: Path | None = None
    if not os.path.lexists(folder):
        try:
            os.rename(tmp, folder)
        except OSError as e:  # another save created the folder since: swap with it instead
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not _rename_exchange(tmp, folder):
                raise
            old = tmp
    elif _rename_exchange(tmp, folder):
        old = tmp  # the exchange left the old checkpoint at the temporary name
    else:
        old = _aside(folder)
        os.rename(folder, old)  # a kill here: recover_interrupted renames it back
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
    _fsync(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _saving_error(folder: Path, e: OSError) -> CheckpointError:
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the destination is on a read-only file system",
        errno.EACCES: "no permission to write there",
        errno.EPERM: "no permission to write there",
    }.get(e.errno)
    detail = f"{why} ({e})" if why else str(e)
    return CheckpointError(f"{folder}: saving failed, the previous checkpoint is kept: {detail}")


@contextlib.contextmanager
def atomic_write_dir(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh folder to write a checkpoint into; on success it replaces ``folder``.

    A kill at any moment leaves ``folder`` holding the complete old or the complete new
    checkpoint (Linux: one ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, undone by
    :func:`recover_interrupted`, which every save runs first). Files of ``folder`` the save
    does not write are carried over (hard links), except stale weights and configs. On an
    exception the temporary folder is deleted and ``folder`` is untouched; a file-system error
    (disk full, read-only, no permission) becomes one :class:`CheckpointError` saying so.
    Two saves into the same folder at once: the last to swap wins, whole.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    if folder.is_symlink():  # swap the real folder, not the link
        folder = Path(os.path.realpath(folder))
    if os.path.lexists(folder) and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; cannot save a checkpoint there")
    tmp = folder.with_name(f".{folder.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(folder)
        os.mkdir(tmp, 0o777)  # honours the umask, unlike mkdtemp's 0o700
        if folder.is_dir():
            os.chmod(tmp, stat.S_IMODE(folder.stat().st_mode))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _saving_error(folder, e) from e
    try:
        yield tmp
        if folder.is_dir():
            _carry_over(folder, tmp)
        _fsync_tree(tmp)
        _swap_in(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, EncdecError):
            raise _saving_error(folder, e) from e
        raise


__all__ = [
    "atomic_output",
    "atomic_write_file",
    "atomic_write_dir",
    "recover_interrupted",
    "interrupted_leftovers",
    "check_interrupted",
]
