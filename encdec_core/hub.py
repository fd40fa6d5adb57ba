"""Resolve ``from_pretrained``'s first argument to a local checkpoint folder.

A local folder is used as is; anything else must be a Hub repo id, fetched (or found in
the cache) by ``huggingface_hub.snapshot_download``. Offline mode (``HF_HUB_OFFLINE=1`` or
``local_files_only=True``) only ever looks in the cache. Hub failures become one
:class:`~encdec_core.errors.CheckpointError` saying what was looked for, where, and what to do.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> resolve_checkpoint(folder) == __import__("pathlib").Path(folder)
True
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from encdec_core.errors import CheckpointError
from encdec_core.formats.atomic import check_interrupted
from encdec_core.formats.shards import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    PT_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
)

# First try: configs + safetensors only, so a repo holding four formats costs one download.
SAFETENSORS_PATTERNS = (CONFIG_NAME, GENERATION_CONFIG_NAME, "model*.safetensors", SAFE_WEIGHTS_INDEX_NAME)
# Fallback for repos without safetensors: the legacy formats the converter reads.
LEGACY_PATTERNS = (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    "pytorch_model*.bin",
    PT_WEIGHTS_INDEX_NAME,
    "tf_model*.h5",
    "tf_model.h5.index.json",
    "flax_model*.msgpack",
    "flax_model.msgpack.index.json",
)

# One part of a repo id: HF's rule (word characters at both ends, at most 96 characters).
_ID_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a well-formed Hub id ("name" or "org/name"), else raise."""
    parts = repo_id.split("/")
    if (
        len(parts) > 2
        or not all(_ID_PART.fullmatch(p) for p in parts)
        or "--" in repo_id
        or ".." in repo_id
        or repo_id.endswith(".git")
    ):
        raise CheckpointError(
            f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id (expected "
            "'name' or 'org/name' of letters, digits, '.', '_', '-', without '--' or '..')"
        )
    return repo_id


def _env_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so a later setting counts.
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").upper() in {"1", "ON", "YES", "TRUE"} for v in values)


def _subfolder(folder: Path, subfolder: str, what: str) -> Path:
    if not subfolder:
        return folder
    if PurePosixPath(subfolder).is_absolute() or ".." in PurePosixPath(subfolder).parts:
        raise CheckpointError(f"subfolder {subfolder!r}: expected a relative path inside {what}")
    path = folder / subfolder
    if not path.is_dir():
        raise CheckpointError(f"{what}: no subfolder {subfolder!r} (looked for {path})")
    return path


def _has_safetensors(folder: Path) -> bool:
    return (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    subfolder: str = "",
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """Local folder holding the checkpoint ``name_or_path`` (a folder or a Hub repo id).

    With ``allow_patterns=None`` the Hub is asked for configs and safetensors weights first,
    and for the legacy formats (.bin, .h5, .msgpack) only if the repo has no safetensors.
    """
    text = os.fspath(name_or_path)
    if not text.strip():  # Path("") is ".", which would silently load the working folder
        raise CheckpointError("name_or_path: expected a local folder or a Hub repo id, got an empty string")
    local = Path(text).expanduser()
    try:
        exists = local.exists()
        # Only looks: warns about an interrupted save's leftovers, raises if they replace the folder.
        check_interrupted(local)
    except CheckpointError:
        raise
    except OSError:  # e.g. a name too long for the filesystem: not a local folder
        exists = False
    if exists:
        if not local.is_dir():
            raise CheckpointError(
                f"{local}: is a file; expected a checkpoint folder (config.json + weights) or a Hub repo id"
            )
        return _subfolder(local, subfolder, str(local))
    repo_id = validate_repo_id(text)
    offline = local_files_only or _env_offline()

    def fetch(patterns: Sequence[str]) -> Path:
        if subfolder:
            patterns = [f"{subfolder}/{p}" for p in patterns]
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=offline,
                token=token,
                allow_patterns=list(patterns),
            )
        )

    try:
        if allow_patterns is not None:
            snapshot = fetch(allow_patterns)
        else:
            snapshot = fetch(SAFETENSORS_PATTERNS)
            if not _has_safetensors(snapshot / subfolder):
                snapshot = fetch(LEGACY_PATTERNS)
    except (OSError, ValueError) as e:  # every huggingface_hub error derives from one of them
        raise _hub_error(e, repo_id, revision, cache_dir, local_files_only) from e
    return _subfolder(snapshot, subfolder, f"Hub repo {repo_id!r} (snapshot {snapshot})")


def _hub_error(
    e: Exception, repo_id: str, revision: str | None, cache_dir: object, local_files_only: bool
) -> CheckpointError:
    """Translate a huggingface_hub error into a CheckpointError that says what to do."""
    rev = revision or "main"
    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    what = f"Hub repo {repo_id!r} at revision {rev!r}"
    if isinstance(e, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        return CheckpointError(
            f"{what} is gated: accept its conditions on https://huggingface.co/{repo_id} and "
            "pass token= (or log in with `hf auth login`)"
        )
    if isinstance(e, RepositoryNotFoundError):
        return CheckpointError(
            f"{what}: repository not found (or private: pass token=); check the id, or pass a local folder"
        )
    if isinstance(e, RevisionNotFoundError):
        return CheckpointError(f"{what}: revision {rev!r} not found; expected a branch, tag or commit hash of the repo")
    if isinstance(e, LocalEntryNotFoundError):
        if local_files_only:
            why, fix = "local_files_only=True", "set local_files_only=False"
        elif _env_offline():
            why, fix = "HF_HUB_OFFLINE=1 is set", "unset HF_HUB_OFFLINE"
        else:
            why, fix = "the Hub could not be reached", "check the network"
        return CheckpointError(
            f"{what} is not in the cache {cache} and cannot be downloaded ({why}); {fix} to "
            "download it, fill the cache first, or pass a local folder"
        )
    # Anything else: HTTP errors (Hub down, 401), a malformed revision, a full disk.
    return CheckpointError(f"{what}: download into {cache} failed: {type(e).__name__}: {e}")


__all__ = ["resolve_checkpoint", "validate_repo_id", "SAFETENSORS_PATTERNS", "LEGACY_PATTERNS"]
