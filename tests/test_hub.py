"""Hub resolution against a hand-built cache, offline; the network is never touched."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from encdec_core import hub
from encdec_core.checkpoint import CheckpointReader, save_safetensors
from encdec_core.errors import CheckpointError
from encdec_core.hub import LEGACY_PATTERNS, SAFETENSORS_PATTERNS, resolve_checkpoint

MAIN = "a" * 40
OLD = "b" * 40


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def fill_cache(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main") -> Path:
    """Lay out ``files`` the way huggingface_hub caches them: blobs + snapshot symlinks + ref."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def sharded_files(tmp_path: Path, value: float) -> dict[str, bytes]:
    src = tmp_path / f"src{value}"
    save_safetensors({f"w{i}": np.full(3, value, np.float32) for i in range(3)}, src, max_shard_size=12)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    files["config.json"] = json.dumps({"value": value}).encode()
    return files


def test_local_folder_is_returned_as_is(tmp_path):
    assert resolve_checkpoint(tmp_path) == tmp_path
    assert resolve_checkpoint(str(tmp_path)) == tmp_path
    (tmp_path / "encoder").mkdir()
    assert resolve_checkpoint(tmp_path, subfolder="encoder") == tmp_path / "encoder"
    with pytest.raises(CheckpointError, match="no subfolder 'decoder'"):
        resolve_checkpoint(tmp_path, subfolder="decoder")
    with pytest.raises(CheckpointError, match=r"subfolder '\.\./x'"):
        resolve_checkpoint(tmp_path, subfolder="../x")


def test_home_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    assert resolve_checkpoint("~/ckpt") == tmp_path / "ckpt"


def test_a_file_is_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: is a file"):
        resolve_checkpoint(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    "bad", ["a/b/c", "org--x/name", "org/na..me", "-name", "name-", "org/na me", "org/", "x" * 97, "org/model.git"]
)
def test_bad_repo_ids(tmp_path, bad):
    with pytest.raises(CheckpointError, match="nor a valid Hub repo id") as info:
        resolve_checkpoint(bad, cache_dir=tmp_path)
    assert repr(bad) in str(info.value)


def test_empty_name_is_refused():
    with pytest.raises(CheckpointError, match="name_or_path.*empty"):
        resolve_checkpoint("")


def test_prefilled_cache_resolves_offline(tmp_path):
    snapshot = fill_cache(tmp_path, "org/tiny-bert2bert", MAIN, sharded_files(tmp_path, 1.0))
    folder = resolve_checkpoint("org/tiny-bert2bert", cache_dir=tmp_path)
    assert folder == snapshot
    # Shards are symlinks into ../../blobs: the reader accepts them (Hub cache layout).
    with CheckpointReader(folder) as ckpt:
        np.testing.assert_array_equal(ckpt.get("w2"), np.full(3, 1.0, np.float32))


def test_revision_by_commit_hash_and_branch(tmp_path):
    fill_cache(tmp_path, "org/m", MAIN, sharded_files(tmp_path, 1.0))
    old = fill_cache(tmp_path, "org/m", OLD, sharded_files(tmp_path, 2.0), ref="v1")
    assert resolve_checkpoint("org/m", cache_dir=tmp_path, revision=OLD) == old
    assert resolve_checkpoint("org/m", cache_dir=tmp_path, revision="v1") == old
    with CheckpointReader(old) as ckpt:
        assert float(ckpt.get("w0")[0]) == 2.0


def test_repo_id_without_org_and_subfolder(tmp_path):
    snapshot = fill_cache(tmp_path, "gpt2", MAIN, {"decoder/config.json": b"{}", "decoder/model.safetensors": b"x"})
    assert resolve_checkpoint("gpt2", cache_dir=tmp_path, subfolder="decoder") == snapshot / "decoder"


def test_cache_miss_offline_says_what_where_and_how(tmp_path):
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("org/absent", cache_dir=tmp_path)
    msg = str(info.value)
    assert "'org/absent'" in msg and "'main'" in msg and str(tmp_path) in msg
    assert "HF_HUB_OFFLINE" in msg and "local folder" in msg


def test_cache_miss_local_files_only(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError, match="local_files_only=True.*set local_files_only=False"):
        resolve_checkpoint("org/absent", cache_dir=tmp_path, local_files_only=True, revision=OLD)


def test_unknown_revision_offline(tmp_path):
    fill_cache(tmp_path, "org/m", MAIN, {"config.json": b"{}"})
    with pytest.raises(CheckpointError, match="'nope'.*not in the cache"):
        resolve_checkpoint("org/m", cache_dir=tmp_path, revision="nope")


def test_legacy_formats_are_fetched_only_without_safetensors(tmp_path, monkeypatch):
    calls = []

    def fake(repo_id, **kw):
        calls.append(kw["allow_patterns"])
        assert kw["local_files_only"] is True  # HF_HUB_OFFLINE=1 forwarded
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    resolve_checkpoint("org/legacy")
    assert calls == [list(SAFETENSORS_PATTERNS), list(LEGACY_PATTERNS)]
    (tmp_path / "model.safetensors").write_bytes(b"")
    calls.clear()
    resolve_checkpoint("org/new", subfolder="", allow_patterns=None)
    assert calls == [list(SAFETENSORS_PATTERNS)]
    calls.clear()
    resolve_checkpoint("org/new", allow_patterns=["*.json"])
    assert calls == [["*.json"]]


def hub_error(cls: type[Exception]) -> Exception:
    err = cls.__new__(cls)  # these need an HTTP response to construct; the message is enough here
    Exception.__init__(err, "404 Client Error")
    return err


@pytest.mark.parametrize(
    ("cls", "pattern"),
    [
        (GatedRepoError, "'org/m'.*is gated.*token="),
        (RepositoryNotFoundError, "'org/m'.*repository not found.*token=.*local folder"),
        (RevisionNotFoundError, "revision 'dev' not found.*branch, tag or commit"),
        (ValueError, "'org/m'.*download into .* failed: ValueError"),
    ],
)
def test_hub_errors_are_translated(tmp_path, monkeypatch, cls, pattern):
    def fake(repo_id, **kw):
        raise hub_error(cls)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    with pytest.raises(CheckpointError, match=pattern) as info:
        resolve_checkpoint("org/m", revision="dev", cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, cls)
