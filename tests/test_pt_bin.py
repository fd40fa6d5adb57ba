"""pytorch_model.bin: round trips, shards, index validation, and refusal of malicious pickles."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from conversion import read_pytorch_bin, write_pytorch_bin
from encdec_core.checkpoint import PT_WEIGHTS_INDEX_NAME, PT_WEIGHTS_NAME
from encdec_core.errors import CheckpointError


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "encoder.embeddings.word_embeddings.weight": torch.randn(11, 7, generator=g),
        "encoder.layer.0.bias": torch.randn(5, generator=g).bfloat16(),
        "decoder.position_ids": torch.arange(13).reshape(1, 13),
        "decoder.lm_head.weight": torch.randn(3, 5, generator=g).half(),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_single_file_round_trip(tmp_path):
    sd = state()
    assert write_pytorch_bin(sd, tmp_path) == [tmp_path / PT_WEIGHTS_NAME]
    assert os.listdir(tmp_path) == [PT_WEIGHTS_NAME]
    assert_same(read_pytorch_bin(tmp_path), sd)
    assert_same(read_pytorch_bin(tmp_path / PT_WEIGHTS_NAME), sd)
    # Transformers reads it with plain torch.load.
    assert_same(torch.load(tmp_path / PT_WEIGHTS_NAME, weights_only=True), sd)


def test_sharded_round_trip(tmp_path):
    sd = {f"h.{i}.w": torch.full((5, 3), float(i)) for i in range(5)}  # 60 bytes each
    write_pytorch_bin(sd, tmp_path, max_shard_size="130B")
    names = sorted(os.listdir(tmp_path))
    assert names == [f"pytorch_model-{i:05d}-of-00003.bin" for i in (1, 2, 3)] + [PT_WEIGHTS_INDEX_NAME]
    index = json.loads((tmp_path / PT_WEIGHTS_INDEX_NAME).read_text())
    assert index["metadata"] == {"total_parameters": 75, "total_size": 300}
    assert index["weight_map"]["h.4.w"] == "pytorch_model-00003-of-00003.bin"
    got = read_pytorch_bin(tmp_path)
    assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    # Saving again unsharded drops the stale shards and index.
    write_pytorch_bin(sd, tmp_path)
    assert os.listdir(tmp_path) == [PT_WEIGHTS_NAME]


def test_views_are_saved_without_their_whole_storage(tmp_path):
    big = torch.zeros(10_000)
    write_pytorch_bin({"small": big[:3], "t": torch.ones(3, 4).T}, tmp_path)
    assert (tmp_path / PT_WEIGHTS_NAME).stat().st_size < 5_000
    got = read_pytorch_bin(tmp_path)
    assert torch.equal(got["t"], torch.ones(4, 3)) and got["small"].shape == (3,)


class Evil:
    """Unpickling this opens (creates) a marker file: code running at load time."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fmt", ["zip", "legacy-pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    path = tmp_path / PT_WEIGHTS_NAME
    payload = {"x": Evil(str(marker)), "w": torch.ones(2)}
    if fmt == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)  # what torch.load's legacy path expects
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused.*would run code") as info:
        read_pytorch_bin(tmp_path)
    assert "open" in str(info.value)  # names the offending global
    assert not marker.exists()


def test_garbage_and_non_state_dict_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=r"a\.bin"):
        read_pytorch_bin(tmp_path / "a.bin")
    torch.save([torch.ones(1)], tmp_path / "b.bin")
    with pytest.raises(CheckpointError, match=r"b\.bin: expected a state dict"):
        read_pytorch_bin(tmp_path / "b.bin")
    with pytest.raises(CheckpointError, match="no pytorch_model.bin"):
        read_pytorch_bin(tmp_path)


def bin_shards(tmp_path, weight_map) -> None:
    torch.save({"x": torch.zeros(2), "y": torch.ones(3)}, tmp_path / "a.bin")
    torch.save({"z": torch.ones(4)}, tmp_path / "b.bin")
    (tmp_path / PT_WEIGHTS_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(
    ("weight_map", "pattern"),
    [
        ({"x": "../a.bin"}, r"'\.\./a\.bin' refused"),
        ({"x": "/tmp/a.bin"}, "absolute"),
        ({"x": "c.bin"}, "'c.bin' is missing"),
        ({"x": "a.bin", "y": "a.bin", "w": "a.bin", "z": "b.bin"}, r"a\.bin.*does not hold them: w"),
    ],
)
def test_bad_index(tmp_path, weight_map, pattern):
    bin_shards(tmp_path, weight_map)
    with pytest.raises(CheckpointError, match=pattern):
        read_pytorch_bin(tmp_path)


def test_same_key_in_two_shards(tmp_path):
    bin_shards(tmp_path, {"x": "a.bin", "y": "a.bin", "z": "b.bin"})
    torch.save({"z": torch.ones(4), "y": torch.ones(3)}, tmp_path / "b.bin")
    with pytest.raises(CheckpointError, match=r"b\.bin.*two shards.*'y'"):
        read_pytorch_bin(tmp_path)
    bin_shards(tmp_path, {"x": "a.bin", "y": "a.bin", "z": "b.bin"})
    assert sorted(read_pytorch_bin(tmp_path)) == ["x", "y", "z"]


def test_write_rejects_non_tensors(tmp_path):
    with pytest.raises(Exception, match=r"state_dict\['w'\].*torch.Tensor"):
        write_pytorch_bin({"w": [1.0]}, tmp_path)


def test_old_non_zip_format_loads_without_mmap(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(sd, tmp_path / PT_WEIGHTS_NAME, _use_new_zipfile_serialization=False)
    assert_same(read_pytorch_bin(tmp_path), sd)
