"""Checkpoint I/O: safetensors round trips, shards, validation errors, atomic folder writes."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from encdec_core.checkpoint import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointReader,
    RawTensor,
    atomic_write_dir,
    atomic_write_file,
    parse_size,
    plan_shards,
    read_json,
    recover_interrupted,
    save_safetensors,
    write_json,
)
from encdec_core.errors import CheckpointError, ConfigError, InputError
from encdec_core.formats import atomic as ck

HF_NAMES = Path(__file__).parent / "fixtures" / "hf_names" / "extra.json"
SHARD_RE = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")


def tensors() -> dict[str, np.ndarray]:
    """Odd distinct shapes, several dtypes."""
    rng = np.random.default_rng(0)
    return {
        "encoder.embeddings.word_embeddings.weight": rng.standard_normal((11, 7)).astype(np.float32),
        "encoder.layer.0.bias": rng.standard_normal(5).astype(np.float16),
        "decoder.position_ids": np.arange(13, dtype=np.int64).reshape(1, 13),
        "decoder.lm_head.weight": rng.standard_normal((3, 5)).astype(np.float64),
        "flag": np.array([True, False, True]),
    }


def write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "pt"})
    return path


# ----------------------------------------------------------------------------- round trips


def test_single_file_round_trip_exact_bytes(tmp_path):
    data = tensors()
    written = save_safetensors(data, tmp_path)
    assert written == [tmp_path / SAFE_WEIGHTS_NAME]
    assert sorted(os.listdir(tmp_path)) == [SAFE_WEIGHTS_NAME]
    # Byte for byte what safetensors' own writer produces: any safetensors reader accepts it.
    assert (tmp_path / SAFE_WEIGHTS_NAME).read_bytes() == safetensors.numpy.save(data, metadata={"format": "pt"})
    with CheckpointReader(tmp_path) as ckpt:
        assert sorted(ckpt.keys()) == sorted(data)
        assert ckpt.metadata == {"format": "pt"}
        for key, value in data.items():
            got = ckpt.get(key)
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
            assert ckpt.shape(key) == value.shape
        assert ckpt.dtype("decoder.position_ids") == "I64"
        assert ckpt.dtype("encoder.layer.0.bias") == "F16"


def test_raw_tensors_f32_f16_bf16_i64(tmp_path):
    ref = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(5, 3).bfloat16(),
        "i64": torch.arange(11, dtype=torch.int64),
    }
    codes = {"f32": "F32", "f16": "F16", "bf16": "BF16", "i64": "I64"}

    def raw(t: torch.Tensor, code: str) -> RawTensor:
        as_bytes = t.contiguous().view(torch.uint8).numpy().tobytes()
        return RawTensor(code, tuple(t.shape), memoryview(as_bytes) if code == "F16" else as_bytes)

    save_safetensors({k: raw(t, codes[k]) for k, t in ref.items()}, tmp_path, metadata={"format": "pt", "x": "y"})
    with CheckpointReader(tmp_path / SAFE_WEIGHTS_NAME) as ckpt:
        assert ckpt.metadata == {"format": "pt", "x": "y"}
        for key, t in ref.items():
            assert ckpt.dtype(key) == codes[key]
            got = ckpt.get(key, "pt")
            assert got.dtype == t.dtype and torch.equal(got, t)
            assert ckpt.get_raw(key) == raw(t, codes[key])._replace(data=t.view(torch.uint8).numpy().tobytes())
        np.testing.assert_array_equal(ckpt.get("f16"), ref["f16"].numpy())
        # numpy has no bfloat16 unless ml_dtypes (imported by TF and JAX) registered it: then the
        # values must be right, else the error must name the file, key and dtype
        try:
            got = ckpt.get("bf16", "np")
        except CheckpointError as e:
            assert re.search(r"model\.safetensors.*'bf16'.*BF16", str(e)), e
        else:
            assert got.dtype.name == "bfloat16"
            np.testing.assert_array_equal(got.astype(np.float32), ref["bf16"].float().numpy())


def test_writer_rejects_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="'w'.*torch.Tensor"):
        save_safetensors({"w": torch.ones(2)}, tmp_path)
    with pytest.raises(InputError, match="'w'.*12 bytes, got 5"):
        save_safetensors({"w": RawTensor("F32", (3,), b"12345")}, tmp_path)
    with pytest.raises(InputError, match="'w'.*'Q8'"):
        save_safetensors({"w": RawTensor("Q8", (1,), b"1")}, tmp_path)
    with pytest.raises(InputError, match="metadata"):
        save_safetensors({"w": np.ones(1)}, tmp_path, metadata={"n": 1})


def test_big_endian_and_non_contiguous_arrays_are_stored_little_endian(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    save_safetensors({"a": a, "t": a.T}, tmp_path)
    with CheckpointReader(tmp_path) as ckpt:
        np.testing.assert_array_equal(ckpt.get("a"), a)
        np.testing.assert_array_equal(ckpt.get("t"), a.T)
        assert ckpt.dtype("a") == "F32"


def test_sharded_round_trip_and_index_layout(tmp_path):
    data = {f"layer.{i}.weight": np.full((5, 3), i, np.float32) for i in range(7)}  # 60 bytes each
    written = save_safetensors(data, tmp_path, max_shard_size=130)  # two tensors per shard
    names = sorted(os.listdir(tmp_path))
    assert names == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)] + [SAFE_WEIGHTS_INDEX_NAME]
    assert sorted(p.name for p in written) == names
    index_text = (tmp_path / SAFE_WEIGHTS_INDEX_NAME).read_text()
    index = json.loads(index_text)
    assert index_text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"] == {"total_parameters": 7 * 15, "total_size": 7 * 60}
    assert index["weight_map"]["layer.0.weight"] == "model-00001-of-00004.safetensors"
    assert index["weight_map"]["layer.6.weight"] == "model-00004-of-00004.safetensors"
    with CheckpointReader(tmp_path) as ckpt:
        assert ckpt._handles == {}  # lazy: nothing opened yet
        assert set(ckpt.keys()) == set(data) and "layer.3.weight" in ckpt and len(ckpt) == 7
        np.testing.assert_array_equal(ckpt.get("layer.3.weight"), data["layer.3.weight"])
        assert list(ckpt._handles) == [("model-00002-of-00004.safetensors", "np")]
        assert torch.equal(ckpt.get("layer.4.weight", "pt"), torch.full((5, 3), 4.0))
        assert dict(ckpt.items()).keys() == data.keys()
        assert ckpt.metadata == {"format": "pt"}


def test_index_matches_transformers_fact_sheet():
    facts = json.loads(HF_NAMES.read_text())
    sample = facts["shard_pt_st_index_sample"]
    assert set(sample["metadata"]) == {"total_parameters", "total_size"}
    for _, fname in sample["first"]:
        m = SHARD_RE.fullmatch(fname)
        assert m and m.group(2) == "00022"
    assert all(SHARD_RE.fullmatch(n) for n in facts["shard_pt_st"] if isinstance(n, str) and n.startswith("model-"))


def test_oversized_tensor_gets_its_own_shard_where_met():
    plan = plan_shards({"a": 4, "big": 100, "c": 4, "d": 8}, 8, "model{suffix}.safetensors")
    assert plan == {
        "model-00001-of-00003.safetensors": ["big"],
        "model-00002-of-00003.safetensors": ["a", "c"],
        "model-00003-of-00003.safetensors": ["d"],
    }
    assert plan_shards({"a": 4}, None, "model{suffix}.safetensors") == {"model.safetensors": ["a"]}
    assert plan_shards({}, 10, "model{suffix}.safetensors") == {"model.safetensors": []}


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12), limit=st.integers(1, 60))
def test_plan_shards_equals_huggingface_hub(sizes, limit):
    from huggingface_hub import split_torch_state_dict_into_shards

    state = {f"t{i}": torch.empty(n, dtype=torch.uint8) for i, n in enumerate(sizes)}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=limit
    )
    ours = plan_shards({k: t.numel() for k, t in state.items()}, limit, "model{suffix}.safetensors")
    assert ours == split.filename_to_tensors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5 * 10**9),
        ("100KB", 100_000),
        ("10MiB", 10 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1kib", 1024),
        ("8Mb", 10**6),  # Transformers' rule: lowercase b counts bits
        ("1.5MB", 1_500_000),
        ("123", 123),
        (" 7 KB ", 7000),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "5 XB", "-1KB", "0", 0, -3, True, 1.5, None])
def test_parse_size_rejects(bad):
    with pytest.raises(InputError, match="max_shard_size"):
        parse_size(bad)


# ----------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda b: b"not a safetensors file at all", id="garbage"),
        pytest.param(lambda b: b"abc", id="too-short"),
        pytest.param(lambda b: b[:-5], id="truncated"),
        pytest.param(lambda b: struct.pack("<Q", 12) + b"{not json!!}" + b[8:], id="bad-header-json"),
        pytest.param(lambda b: struct.pack("<Q", 10**9) + b[8:], id="header-length-past-end"),
    ],
)
def test_corrupt_file_raises_checkpoint_error_naming_it(tmp_path, corrupt):
    good = safetensors.numpy.save({"w": np.ones((2, 3), np.float32)})
    path = tmp_path / SAFE_WEIGHTS_NAME
    path.write_bytes(corrupt(good))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        CheckpointReader(tmp_path).get("w")


def test_header_offsets_past_file_end(tmp_path):
    good = safetensors.numpy.save({"w": np.ones((2, 3), np.float32)})
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    header["w"]["data_offsets"] = [0, 4000]
    header["w"]["shape"] = [1000]
    text = json.dumps(header).encode()
    path = tmp_path / "weights.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + n :])
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        CheckpointReader(path).keys()


def shard_folder(tmp_path: Path, weight_map: dict[str, str] | str) -> Path:
    """A folder with shards a.safetensors (x, y) and b.safetensors (z), and the given index."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_safetensors(folder / "a.safetensors", {"x": np.zeros(2, np.float32), "y": np.ones(3, np.float32)})
    write_safetensors(folder / "b.safetensors", {"z": np.ones(4, np.float32)})
    text = weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(text)
    return folder


def test_valid_custom_shard_names(tmp_path):
    folder = shard_folder(tmp_path, {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"})
    with CheckpointReader(folder) as ckpt:
        assert ckpt.keys() == ["x", "y", "z"]
        np.testing.assert_array_equal(ckpt.get("z"), np.ones(4, np.float32))


@pytest.mark.parametrize(
    ("weight_map", "pattern"),
    [
        ({"x": "../x.safetensors"}, r"'\.\./x\.safetensors' refused.*'\.\.'"),
        ({"x": "sub/../../x.safetensors"}, "refused"),
        ({"x": "/etc/passwd"}, "'/etc/passwd' refused.*absolute"),
        ({"x": "C:\\x.safetensors"}, "refused"),
        ({"x": "c.safetensors"}, "'c.safetensors' is missing"),
        ({"x": 3}, "weight_map"),
        ('{"metadata": {}}', "weight_map"),
        ("[1, 2]", "weight_map"),
        ('{"weight_map": {"x": "a.safetensors",\n "x": "b.safetensors"}}', "'x' appears twice"),
        ('{"weight_map": {"x": "a.safetensors",}}', "line 1, column"),
    ],
)
def test_bad_index_raises_naming_the_index(tmp_path, weight_map, pattern):
    folder = shard_folder(tmp_path, weight_map)
    with pytest.raises(CheckpointError, match=pattern) as info:
        CheckpointReader(folder)
    assert SAFE_WEIGHTS_INDEX_NAME in str(info.value)


def test_symlinked_shard_escaping_the_folder_is_refused(tmp_path):
    outside = write_safetensors(tmp_path / "outside.safetensors", {"x": np.zeros(1, np.float32)})
    folder = shard_folder(tmp_path, {"x": "link.safetensors"})
    (folder / "link.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="link.safetensors' refused.*outside"):
        CheckpointReader(folder)


def test_same_key_in_two_shards(tmp_path):
    folder = shard_folder(tmp_path, {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"})
    write_safetensors(folder / "b.safetensors", {"z": np.ones(4, np.float32), "x": np.ones(2, np.float32)})
    ckpt = CheckpointReader(folder)
    with pytest.raises(CheckpointError, match=r"b\.safetensors.*two shards.*'x' \(index: a\.safetensors\)"):
        ckpt.get("z")


def test_index_names_a_tensor_its_shard_lacks(tmp_path):
    folder = shard_folder(tmp_path, {"x": "a.safetensors", "w": "a.safetensors"})
    with pytest.raises(CheckpointError, match=r"a\.safetensors.*does not hold them: w"):
        CheckpointReader(folder).get("x")


def test_unknown_key_and_empty_folder(tmp_path):
    save_safetensors({"w": np.ones(1, np.float32)}, tmp_path / "c")
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        CheckpointReader(tmp_path / "c").get("nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        CheckpointReader(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such"):
        CheckpointReader(tmp_path / "missing")


# ----------------------------------------------------------------------------- atomic writes


def checkpoint(folder: Path, value: float, shard: int | None = None) -> None:
    save_safetensors({f"w{i}": np.full(4, value, np.float32) for i in range(3)}, folder, max_shard_size=shard)
    write_json(folder / "config.json", {"value": value})


def temp_leftovers(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.startswith("."))


def test_atomic_write_dir_creates_new_folder(tmp_path):
    target = tmp_path / "deep" / "model"
    with atomic_write_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and not target.exists()
        checkpoint(tmp, 1.0)
    assert sorted(os.listdir(target)) == ["config.json", SAFE_WEIGHTS_NAME]
    assert temp_leftovers(target.parent) == []


def test_atomic_write_dir_keeps_old_folder_on_exception(tmp_path):
    target = tmp_path / "model"
    with atomic_write_dir(target) as tmp:
        checkpoint(tmp, 1.0)
    before = {n: (target / n).read_bytes() for n in os.listdir(target)}
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write_dir(target) as tmp:
            checkpoint(tmp, 2.0)
            raise RuntimeError("boom")
    assert {n: (target / n).read_bytes() for n in os.listdir(target)} == before
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback-renames"])
def test_save_replaces_weights_keeps_user_files(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(ck, "_rename_exchange", lambda a, b: False)
    target = tmp_path / "model"
    with atomic_write_dir(target) as tmp:
        checkpoint(tmp, 1.0, shard=20)  # three shards + index
        (tmp / "pytorch_model.bin").write_bytes(b"old bin")
    (target / "tokenizer.json").write_text('{"vocab": 1}')
    (target / "README.md").write_text("# mine")
    (target / "assets").mkdir()
    (target / "assets" / "merges.txt").write_text("a b")
    with atomic_write_dir(target) as tmp:
        checkpoint(tmp, 2.0)  # one file this time
    assert sorted(os.listdir(target)) == ["README.md", "assets", "config.json", SAFE_WEIGHTS_NAME, "tokenizer.json"]
    assert (target / "tokenizer.json").read_text() == '{"vocab": 1}'
    assert (target / "assets" / "merges.txt").read_text() == "a b"
    assert read_json(target / "config.json", "config") == {"value": 2.0}
    with CheckpointReader(target) as ckpt:
        np.testing.assert_array_equal(ckpt.get("w2"), np.full(4, 2.0, np.float32))
    assert temp_leftovers(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_renameat2_exchange_is_used_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert ck._rename_exchange(a, b) is True
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones included) with its bytes: a snapshot of the filesystem."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_reading_never_changes_the_filesystem_and_says_what_a_killed_save_left(tmp_path, caplog):
    target = tmp_path / "model"
    with atomic_write_dir(target) as tmp:
        checkpoint(tmp, 1.0)
    # A kill between the fallback's two renames: the old folder is aside, none in place.
    os.rename(target, ck._aside(target))
    before = tree(tmp_path)
    with pytest.raises(CheckpointError, match=r"interrupted.*\.model\.encdec-old.*recover_interrupted"):
        CheckpointReader(target)
    from encdec_core.hub import resolve_checkpoint

    with pytest.raises(CheckpointError, match="recover_interrupted"):
        resolve_checkpoint(target)
    assert tree(tmp_path) == before  # nothing renamed, nothing deleted
    assert recover_interrupted(target) is True  # the explicit call puts it back
    # Leftovers beside a complete folder (an aside copy, a dead save's temporary folder): one warning, no change.
    ck._aside(target).mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".model.tmp-{ck._HOST}-{int(dead.stdout)}-0123abcd").mkdir()
    before = tree(tmp_path)
    with caplog.at_level("WARNING", logger="encdec"):
        assert resolve_checkpoint(target) == target
        with CheckpointReader(target) as ckpt:
            np.testing.assert_array_equal(ckpt.get("w0"), np.full(4, 1.0, np.float32))
    assert tree(tmp_path) == before
    warnings = [r.getMessage() for r in caplog.records if "interrupted save" in r.getMessage()]
    assert len(warnings) == 1 and ".model.encdec-old" in warnings[0] and ".model.tmp-" in warnings[0]
    assert recover_interrupted(target) is False  # the aside copy was garbage: gone, with the dead temp
    assert temp_leftovers(tmp_path) == []


def test_atomic_write_dir_refuses_a_file(tmp_path):
    (tmp_path / "model").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        with atomic_write_dir(tmp_path / "model"):
            pass


def test_atomic_write_file_and_json(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_file(path, b"old")
    write_json(path, {"b": 1, "a": [1, 2], "é": "ü"})
    text = path.read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1, "é": "ü"}, indent=2, sort_keys=True) + "\n"
    assert text.index('"a"') < text.index('"b"')
    assert read_json(path, "config") == {"a": [1, 2], "b": 1, "é": "ü"}
    assert os.listdir(tmp_path) == ["config.json"]


def test_read_json_errors_name_file_line_column(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "a": 1,\n  "b": oops\n}\n')
    with pytest.raises(ConfigError, match=r"config .*config\.json: invalid JSON at line 3, column 8"):
        read_json(path, "config", error=ConfigError)
    with pytest.raises(CheckpointError, match=r"config .*nope\.json: file not found"):
        read_json(tmp_path / "nope.json", "config")
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="UTF-8"):
        read_json(path, "config")


def test_core_modules_import_no_framework():
    code = (
        "import sys, encdec_core.checkpoint, encdec_core.hub, encdec_core.report, conversion;"
        "bad = [m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules];"
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_rewrite_of_transformers_file_is_byte_identical(tmp_path):
    src = FIXTURES / "bert2bert" / "pt"
    with CheckpointReader(src) as ckpt:
        raw = {k: ckpt.get_raw(k) for k in ckpt.keys()}
        assert ckpt.metadata == {"format": "pt"}
    save_safetensors(raw, tmp_path)
    assert (tmp_path / SAFE_WEIGHTS_NAME).read_bytes() == (src / SAFE_WEIGHTS_NAME).read_bytes()


def test_reads_transformers_shards_like_the_single_file():
    single, sharded = FIXTURES / "bert2gpt2" / "pt", FIXTURES / "bert2gpt2" / "pt_sharded"
    index = json.loads((sharded / SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert all(SHARD_RE.fullmatch(f) for f in index["weight_map"].values())
    with CheckpointReader(single) as one, CheckpointReader(sharded) as many:
        assert sorted(one.keys()) == sorted(many.keys())
        assert index["metadata"]["total_size"] == sum(len(many.get_raw(k).data) for k in many.keys())
        for key in one.keys():
            assert one.get_raw(key) == many.get_raw(key)


def test_failed_swap_keeps_old_folder_and_raises_checkpoint_error(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_write_dir(target) as tmp:
        checkpoint(tmp, 1.0)

    def fail(a, b):
        raise PermissionError(13, "Permission denied", str(b))

    monkeypatch.setattr(ck, "_rename_exchange", fail)
    with pytest.raises(CheckpointError, match="previous checkpoint is kept.*Permission denied"):
        with atomic_write_dir(target) as tmp:
            checkpoint(tmp, 2.0)
    assert read_json(target / "config.json", "config") == {"value": 1.0}
    assert temp_leftovers(tmp_path) == []


def test_reader_frameworks_and_bad_framework(tmp_path):
    save_safetensors({"w": np.arange(3, dtype=np.float32)}, tmp_path)
    with CheckpointReader(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot open it for framework='bogus'"):
            ckpt.get("w", "bogus")
        assert isinstance(ckpt.get("w", "numpy"), np.ndarray)
        assert isinstance(ckpt.get("w", "pt"), torch.Tensor)


SAVER = """
import sys, numpy as np
from encdec_core import checkpoint as ck
from encdec_core.formats import atomic
if sys.argv[2] == "fallback":
    atomic._rename_exchange = lambda a, b: False
i = 0
while True:
    i += 1
    with ck.atomic_write_dir(sys.argv[1]) as tmp:
        ck.save_safetensors({f"w{j}": np.full(50_000, i, np.float32) for j in range(4)}, tmp, max_shard_size=300_000)
        ck.write_json(tmp / "config.json", {"value": i})
    print(i, flush=True)
"""


KILL_TRIALS = 60  # SIGKILLs at random moments of a saving loop, over both swap modes


@pytest.mark.parametrize("mode", ["renameat2", "fallback"])
def test_kill_at_any_moment_leaves_a_complete_checkpoint(tmp_path, mode):
    import signal
    import time

    target = tmp_path / "model"
    with atomic_write_dir(target) as tmp:
        checkpoint(tmp, 0.0)
    (target / "tokenizer.json").write_text("{}")
    root = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(7 if mode == "renameat2" else 8)
    seen = set()
    for delay in rng.uniform(0.15, 0.9, KILL_TRIALS // 2):  # 2 modes: KILL_TRIALS kills in all
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target), mode], cwd=root, stdout=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        recover_interrupted(target)  # the writer's job (the next save runs it): readers only read
        with CheckpointReader(target) as ckpt:
            value = read_json(target / "config.json", "config")["value"]
            seen.add(value)
            for key in ckpt.keys():
                assert float(ckpt.get(key)[-1]) == value  # weights and config from the same save
        assert (target / "tokenizer.json").exists()
    assert len(seen) > 1  # kills landed at different moments, not always before the first save
    with atomic_write_dir(target) as tmp:  # the next save clears the killed saves' leftovers
        checkpoint(tmp, 9.0)
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["pt", "pt_sharded", "pt_bin", "tf", "flax"])
def test_no_read_path_touches_leftovers_of_a_killed_save(tmp_path, fmt, caplog):
    import shutil

    from conversion.formats import detect, read_canonical
    from encdec_core.formats.canonical import open_source
    from encdec_core.hub import resolve_checkpoint

    target = tmp_path / "model"
    shutil.copytree(FIXTURES / "bert2gpt2" / fmt, target)
    ck._aside(target).mkdir()  # what a killed fallback swap leaves beside a complete folder
    (ck._aside(target) / "config.json").write_text("{}")
    (target / ".model.safetensors.tmp-0123abcd").write_bytes(b"half")  # a killed atomic_output
    before = tree(tmp_path)
    with caplog.at_level("WARNING", logger="encdec"):
        resolve_checkpoint(target)
        with open_source(target) as source:
            assert source.keys()
        detect(target)
        read_canonical(target, progress=False)
    assert tree(tmp_path) == before
    said = [r.getMessage() for r in caplog.records if "interrupted save" in r.getMessage()]
    assert len(said) == 1 and ".model.encdec-old" in said[0] and ".model.safetensors.tmp-0123abcd" in said[0]
