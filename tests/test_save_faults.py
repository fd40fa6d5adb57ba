"""Saves under faults: each leaves the previous checkpoint whole and raises one clear error.

The disk filling up in the middle of a save (ENOSPC injected into the writes), a read-only
destination, two processes saving into the same folder at once, and ``encdec convert`` killed
halfway. (A SIGKILL at random moments of a saving loop is tested in test_checkpoint_io.py.)
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors import SafetensorError

from encdec_core.checkpoint import CheckpointReader, atomic_write_dir, read_json, save_safetensors, write_json
from encdec_core.errors import CheckpointError
from encdec_core.formats import atomic, safetensors_io

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def save(folder: Path, value: float, shard: int | None = None) -> None:
    with atomic_write_dir(folder) as tmp:
        save_safetensors({f"w{i}": np.full(64, value, np.float32) for i in range(4)}, tmp, max_shard_size=shard)
        write_json(tmp / "config.json", {"value": value})


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``, hidden ones included, with its bytes."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def previous(tmp_path) -> tuple[Path, dict]:
    """A complete checkpoint (sharded, with a user file) and a snapshot of its parent folder."""
    target = tmp_path / "model"
    save(target, 1.0, shard=600)
    (target / "tokenizer.json").write_text("{}")
    return target, snapshot(tmp_path)


def test_disk_full_in_the_middle_of_the_weights(previous, monkeypatch):
    target, before = previous
    real, calls = safetensors_io.serialize_file, []

    def fills_up(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second shard: half written, then the disk is full (safetensors' own error)
            Path(path).write_bytes(b"\0" * 100)
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors_io, "serialize_file", fills_up)
    with pytest.raises(
        CheckpointError, match=r"model: saving failed, the previous checkpoint is kept: the disk is full"
    ):
        save(target, 2.0, shard=600)
    assert len(calls) == 2
    assert snapshot(target.parent) == before  # the old checkpoint whole, no temporary file or folder left


class _FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, fd: int, room: int):
        self._fd, self._room = fd, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self._room:
            os.write(self._fd, bytes(b[: self._room]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(b)
        return os.write(self._fd, b)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def test_disk_full_while_writing_the_config(previous, monkeypatch):
    target, before = previous
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: _FullDisk(fd, room=5))
    with pytest.raises(CheckpointError, match=r"previous checkpoint is kept: the disk is full \(\[Errno 28\]"):
        save(target, 2.0)
    assert snapshot(target.parent) == before


def test_backend_save_on_a_full_disk(tmp_path, monkeypatch):
    from encdec_pt import EncoderDecoderModel

    model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    target = tmp_path / "saved"
    model.save_pretrained(target)
    before = snapshot(tmp_path)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors_io, "serialize_file", full)
    with pytest.raises(
        CheckpointError, match="saved: saving failed, the previous checkpoint is kept: the disk is full"
    ):
        model.save_pretrained(target)
    assert snapshot(tmp_path) == before


def test_read_only_destination(previous, monkeypatch):
    target, before = previous

    def read_only(path, mode=0o777):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(atomic.os, "mkdir", read_only)  # what a read-only file system answers
    with pytest.raises(CheckpointError, match="previous checkpoint is kept: the destination is on a read-only file"):
        save(target, 2.0)
    assert snapshot(target.parent) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions (the injected EROFS test covers root)")
def test_destination_without_write_permission(previous):
    target, before = previous
    os.chmod(target.parent, 0o555)
    try:
        with pytest.raises(CheckpointError, match="previous checkpoint is kept: no permission to write there"):
            save(target, 2.0)
    finally:
        os.chmod(target.parent, 0o755)
    assert snapshot(target.parent) == before


RACER = textwrap.dedent("""
    import sys, time, numpy as np
    from encdec_core.checkpoint import atomic_write_dir, save_safetensors, write_json
    folder, tag, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print(time.monotonic(), flush=True)
    for i in range(rounds):
        with atomic_write_dir(folder) as tmp:
            save_safetensors({f"w{j}": np.full(20_000, tag + i, np.float32) for j in range(4)}, tmp,
                             max_shard_size=100_000)
            write_json(tmp / "config.json", {"value": tag + i})
    print(time.monotonic(), flush=True)
""")


def test_two_processes_saving_into_one_folder(tmp_path):
    target = tmp_path / "model"
    save(target, 0.0)
    (target / "README.md").write_text("mine")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(target), str(tag), "30"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in (1000.0, 2000.0)
    ]
    seen = set()
    while any(p.poll() is None for p in procs):  # the folder is always one save's, whole
        try:
            with CheckpointReader(target) as ckpt:
                values = {float(ckpt.get(k)[0]) for k in ckpt.keys()}
        except (CheckpointError, FileNotFoundError):
            continue  # a swap between opening the index and a shard: read again
        seen |= values
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors  # neither save failed
    (a0, a1), (b0, b1) = ([float(t) for t in p.stdout.read().split()] for p in procs)
    assert a0 < b1 and b0 < a1  # the two saving loops did run at the same time
    value = read_json(target / "config.json", "config")["value"]
    with CheckpointReader(target) as ckpt:
        assert {float(ckpt.get(k)[0]) for k in ckpt.keys()} == {value}  # weights and config of one save
        assert len(ckpt.keys()) == 4
    assert value in (1029.0, 2029.0)  # the last save of one of them, whole
    assert (target / "README.md").read_text() == "mine"  # carried over by every save
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left by either


KILLED_CONVERT = textwrap.dedent("""
    import os, signal, sys
    from encdec_core.formats import atomic
    def killed(root):  # every weight written, the swap not done yet: the worst moment
        os.kill(os.getpid(), signal.SIGKILL)
    atomic._fsync_tree = killed
    from conversion.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("existing", [False, True], ids=["new-destination", "overwrite"])
def test_convert_killed_halfway_leaves_no_half_folder(tmp_path, existing, caplog):
    src, dst = FIXTURES / "bert2gpt2" / "pt", tmp_path / "out"
    args = ["convert", str(src), str(dst), "--to", "h5", "--max-shard-size", "50KB", "--no-progress"]
    if existing:
        subprocess.run(
            [sys.executable, "-m", "conversion.cli", "convert", str(src), str(dst), "--to", "msgpack", "--no-progress"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        args.append("--overwrite")
    before = snapshot(dst) if existing else None
    proc = subprocess.run([sys.executable, "-c", KILLED_CONVERT, *args], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    if existing:
        assert snapshot(dst) == before  # the previous conversion whole
    else:
        assert not dst.exists()  # no half folder at the destination
    leftovers = [n for n in os.listdir(tmp_path) if n != "out"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.tmp-")  # the killed save's, beside it
    if existing:
        from encdec_core.hub import resolve_checkpoint

        with caplog.at_level("WARNING", logger="encdec"):
            resolve_checkpoint(dst)  # loading only says so, and changes nothing
        assert any("interrupted save" in r.getMessage() for r in caplog.records)
        assert snapshot(dst) == before and len(os.listdir(tmp_path)) == 2
    done = subprocess.run([sys.executable, "-m", "conversion.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the next save cleared the killed one's leftovers
    assert (dst / "tf_model.h5.index.json").is_file()
