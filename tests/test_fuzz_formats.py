"""Untrusted files from the Hub: the tf_model.h5, flax_model.msgpack and pytorch_model.bin readers, fuzzed.

As the safetensors reader in test_fuzz.py: mutations of the real fixture files (hypothesis,
derandomized so CI sees the same cases every run) and hand-made hostile files (size bombs,
deep nesting, wrong types, links out of the file, code in a pickle). Every read ends in a
result or one of encdec's typed errors; a crash or any other exception fails the test, a hang
is cut by faulthandler, and memory stays bounded (peak RSS growth checked per hostile file).
"""

from __future__ import annotations

import faulthandler
import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encdec_core.errors import CheckpointError, EncdecError
from encdec_core.formats.flax_msgpack import read_flax_msgpack
from encdec_core.formats.pt_bin import read_pytorch_bin
from encdec_core.formats.tf_h5 import TFH5Reader, write_names

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bert2gpt2"
FILES = {
    "h5": FIXTURE / "tf" / "tf_model.h5",
    "msgpack": FIXTURE / "flax" / "flax_model.msgpack",
    "bin": FIXTURE / "pt_bin" / "pytorch_model.bin",
}
# Few examples per property: the h5 reader takes ~70 ms a file, and the whole module stays
# well under a minute on 2 cores. A longer hunt: ENCDEC_FUZZ_FORMAT_EXAMPLES=2000.
EXAMPLES = int(os.environ.get("ENCDEC_FUZZ_FORMAT_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_RSS_GROWTH = 256 * 2**20  # bytes: a hostile file may not make a reader allocate more
MAX_SECONDS = 120  # any single test past this is a hang: faulthandler dumps the stacks and exits


@pytest.fixture(autouse=True)
def no_hang():
    faulthandler.dump_traceback_later(MAX_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def read_all(fmt: str, folder: Path) -> None:
    """Everything a loader would do with the file: list, shape, read each array."""
    if fmt == "h5":
        with TFH5Reader(folder) as r:
            for key in r.keys():
                r.shape(key), r.dtype(key)
                r.get(key).sum()
    elif fmt == "msgpack":
        for a in read_flax_msgpack(folder).values():
            a.sum()
    else:
        for t in read_pytorch_bin(folder).values():
            t.sum()


def only_typed_errors(fmt: str, folder: Path) -> EncdecError | None:
    """Read; return the typed error if any (anything else propagates and fails the test)."""
    try:
        read_all(fmt, folder)
    except EncdecError as e:
        assert str(folder) in str(e)  # the error names the file
        return e
    return None


def mutate(data, raw: bytearray) -> bytes:
    mode = data.draw(st.sampled_from(["flip", "truncate", "span", "grow"]))
    if mode == "flip":
        for _ in range(data.draw(st.integers(1, 12))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif mode == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif mode == "span":  # a run of bytes overwritten: lengths, offsets and type codes alike
        at = data.draw(st.integers(0, len(raw) - 8))
        raw[at : at + 8] = data.draw(st.binary(min_size=8, max_size=8))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    return bytes(raw)


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_real_files_read_whole(fmt):
    assert only_typed_errors(fmt, FILES[fmt].parent) is None


@pytest.mark.parametrize("fmt", sorted(FILES))
@FUZZ
@given(data=st.data())
def test_mutated_real_files_raise_only_typed_errors(fmt, data):
    raw = mutate(data, bytearray(FILES[fmt].read_bytes()))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / FILES[fmt].name).write_bytes(raw)
        only_typed_errors(fmt, Path(d))


msgpack_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=16),
    st.builds(msgpack.ExtType, st.integers(0, 5), st.binary(max_size=24)),
    st.builds(
        lambda shape, dtype, n: msgpack.ExtType(1, msgpack.packb((shape, dtype, b"\0" * n))),
        st.lists(st.integers(-2, 2**40), max_size=3),
        st.sampled_from(["float32", "bfloat16", "int64", "object", "<U3", "V4", "x"]),
        st.integers(0, 24),
    ),
)
msgpack_tree = st.recursive(
    msgpack_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-(2**63), 2**64 - 1)), inner, max_size=3),
    ),
    max_leaves=10,
)


@FUZZ
@given(msgpack_tree)
def test_generated_msgpack_trees_raise_only_typed_errors(tree):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
        if only_typed_errors("msgpack", Path(d)) is None:  # what parses is a flat map of checked arrays
            assert all(isinstance(a, np.ndarray) for a in read_flax_msgpack(Path(d)).values())


# ----------------------------------------------------------------------------- hand-made hostile files


def _array_ext(shape, dtype: str, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb((shape, dtype, data), use_bin_type=True))


def _deep(depth: int) -> bytes:
    return b"\x81\xa1a" * depth + msgpack.packb(_array_ext([1], "float32", b"\0" * 4))  # fixmap{"a": ...} nested


HOSTILE_MSGPACK = {
    "size bomb: 10**12 elements declared, 4 bytes held": msgpack.packb(
        {"w": _array_ext([10**6, 10**6], "float32", b"\0" * 4)}
    ),
    "negative dimension": msgpack.packb({"w": _array_ext([-1, 4], "float32", b"\0" * 16)}),
    "object dtype": msgpack.packb({"w": _array_ext([2], "object", b"\0" * 16)}),
    "string dtype": msgpack.packb({"w": _array_ext([2], "<U2", b"\0" * 16)}),
    "other extension type": msgpack.packb({"w": msgpack.ExtType(3, b"\0" * 8)}),
    "array record not a triple": msgpack.packb({"w": msgpack.ExtType(1, msgpack.packb([1, 2]))}),
    "map claiming 2**32-1 entries": b"\xdf\xff\xff\xff\xff" + b"\xa1a\xc0",
    "bin claiming 4 GiB": b"\x81\xa1w\xc6\xff\xff\xff\xff" + b"\0" * 16,
    "ext claiming 4 GiB": b"\x81\xa1w\xc9\xff\xff\xff\xff\x01" + b"\0" * 16,
    "nesting 100000 deep": _deep(100_000),
    "a list, not a map": msgpack.packb([_array_ext([1], "float32", b"\0" * 4)]),
    "a string leaf": msgpack.packb({"w": "not an array"}),
    "chunked array whose chunks hold too few elements": msgpack.packb(
        {
            "w": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 10**9},
                "chunks": {"0": _array_ext([2], "float32", b"\0" * 8)},
            }
        }
    ),
    "chunked array with a gap": msgpack.packb(
        {
            "w": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 2},
                "chunks": {"1": _array_ext([2], "float32", b"\0" * 8)},
            }
        }
    ),
    "empty file": b"",
    "trailing garbage": msgpack.packb({"w": _array_ext([1], "float32", b"\0" * 4)}) + b"\xc1",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_MSGPACK))
def test_hostile_msgpack(tmp_path, name):
    (tmp_path / "flax_model.msgpack").write_bytes(HOSTILE_MSGPACK[name])
    before = _rss()
    with pytest.raises(CheckpointError, match="flax_model.msgpack"):
        read_all("msgpack", tmp_path)
    assert _rss() - before < MAX_RSS_GROWTH


def test_msgpack_deep_but_legal_nesting_reads(tmp_path):
    # deeper than Python's recursion limit would allow a recursive reader, within msgpack's own limit
    (tmp_path / "flax_model.msgpack").write_bytes(_deep(1000))
    ((key, a),) = read_flax_msgpack(tmp_path).items()
    assert key == "/".join(["a"] * 1000) and a.shape == (1,)


def _keras_file(path: Path, build) -> None:
    """A tf_model.h5 laid out as Keras 2 writes it, whose one layer 'encoder' ``build`` fills."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"encoder"], dtype=object)
        g = f.create_group("encoder")
        write_names(g, "weight_names", build(f, g))  # split over 64 KiB as Keras does


def _external_link(f, g):
    other = Path(f.filename).parent / "elsewhere.h5"
    with h5py.File(other, "w") as o:
        o.create_dataset("w", data=np.ones(3, np.float32))
    g["m/w:0"] = h5py.ExternalLink(str(other), "/w")
    return ["m/w:0"]


def _dangling_external(f, g):
    g["m/w:0"] = h5py.ExternalLink("/nonexistent/file.h5", "/w")
    return ["m/w:0"]


def _soft_link(f, g):
    g.create_dataset("m/real:0", data=np.ones(3, np.float32))
    g["m/w:0"] = h5py.SoftLink("/encoder/m/real:0")
    return ["m/w:0"]


def _dangling_soft(f, g):
    g["m/w:0"] = h5py.SoftLink("/nowhere")
    return ["m/w:0"]


def _external_storage(f, g):
    raw = Path(f.filename).parent / "raw.bin"
    raw.write_bytes(b"\0" * 12)
    g.create_dataset("m/w:0", shape=(3,), dtype=np.float32, external=[(str(raw), 0, 12)])
    return ["m/w:0"]


def _virtual(f, g):
    src = h5py.VirtualSource(str(Path(f.filename).parent / "src.h5"), "w", shape=(3,))
    layout = h5py.VirtualLayout(shape=(3,), dtype=np.float32)
    layout[:] = src
    g.create_virtual_dataset("m/w:0", layout)
    return ["m/w:0"]


def _fill_bomb(f, g):  # chunked, never written: HDF5 would hand back 4 TB of fill value
    g.create_dataset("m/w:0", shape=(10**6, 10**6), dtype=np.float32, chunks=(64, 64))
    return ["m/w:0"]


def _compressed(f, g):  # a zero bomb once inflated
    g.create_dataset("m/w:0", data=np.zeros((2048, 2048), np.float32), compression="gzip")
    return ["m/w:0"]


def _strings(f, g):
    g.create_dataset("m/w:0", data=np.array([b"abc", b"de"], dtype=object), dtype=h5py.string_dtype())
    return ["m/w:0"]


def _compound(f, g):
    g.create_dataset("m/w:0", data=np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    return ["m/w:0"]


def _group_not_dataset(f, g):
    g.create_group("m/w:0")
    return ["m/w:0"]


def _listed_but_absent(f, g):
    return ["m/w:0"]


def _many_names(f, g):  # a long list of names that lead nowhere: one error, quickly
    return [f"m/{i}:0" for i in range(3000)]


HOSTILE_H5 = {
    "external link": _external_link,
    "dangling external link": _dangling_external,
    "soft link": _soft_link,
    "dangling soft link": _dangling_soft,
    "external raw storage": _external_storage,
    "virtual dataset": _virtual,
    "fill-value size bomb": _fill_bomb,
    "compressed dataset": _compressed,
    "string dataset": _strings,
    "compound dataset": _compound,
    "group where a dataset is listed": _group_not_dataset,
    "listed weight absent": _listed_but_absent,
    "3000 names leading nowhere": _many_names,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_H5))
def test_hostile_h5(tmp_path, name):
    _keras_file(tmp_path / "tf_model.h5", HOSTILE_H5[name])
    before = _rss()
    with pytest.raises(CheckpointError, match="tf_model.h5"):
        read_all("h5", tmp_path)
    assert _rss() - before < MAX_RSS_GROWTH


@pytest.mark.parametrize(
    "layer_names",
    [
        np.array([1, 2, 3]),
        np.array([[b"encoder"]], dtype=object),
        np.array([b"../etc"], dtype=object),
        np.array([b"encoder/x"], dtype=object),
    ],
    ids=["ints", "2-d", "dotdot", "path"],
)
def test_h5_layer_names_of_wrong_types(tmp_path, layer_names):
    with h5py.File(tmp_path / "tf_model.h5", "w") as f:
        f.attrs["layer_names"] = layer_names
        f.create_dataset("x", data=np.ones(2, np.float32))
    with pytest.raises(CheckpointError, match="tf_model.h5"):
        read_all("h5", tmp_path)


def test_h5_deep_nesting_reads(tmp_path):
    name = "/".join(f"g{i}" for i in range(300)) + "/kernel:0"
    _keras_file(tmp_path / "tf_model.h5", lambda f, g: (g.create_dataset(name, data=np.ones(2, np.float32)), [name])[1])
    with TFH5Reader(tmp_path) as r:
        (key,) = r.keys()
        assert r.get(key).tolist() == [1.0, 1.0]


def _attr_message(raw: bytes, name: bytes) -> tuple[int, int]:
    """(dataspace offset, data offset) of the version-1 attribute message ``name`` (as h5py writes it)."""
    at = raw.index(name + b"\0") - 8
    assert raw[at] == 1, "expected a version-1 attribute message"
    name_size, dt_size, ds_size = struct.unpack_from("<HHH", raw, at + 2)
    ds = at + 8 + -(-name_size // 8) * 8 + -(-dt_size // 8) * 8
    assert raw[ds] == 1 and raw[ds + 1] == 1  # dataspace version 1, one dimension
    return ds, ds + -(-ds_size // 8) * 8


def _forge_shape(raw: bytearray, name: bytes) -> None:  # 2**28 names of 16-byte descriptors: 4 GiB
    ds, _ = _attr_message(raw, name)
    struct.pack_into("<QQ", raw, ds + 8, 2**28, 2**28)  # size and max size of the one dimension


def _forge_length(raw: bytearray, name: bytes) -> None:  # the first string claims 4 GiB (HDF5 allocates it)
    _, data = _attr_message(raw, name)
    struct.pack_into("<I", raw, data, 0xFFFFFFF0)


FORGED_ATTRS = {
    "weight_names shape 2**28": (_forge_shape, b"weight_names"),
    "weight_names string of 4 GiB": (_forge_length, b"weight_names"),
    "layer_names shape 2**28": (_forge_shape, b"layer_names"),
    "layer_names string of 4 GiB": (_forge_length, b"layer_names"),
}
# The read runs in a child whose address space is capped: were the forged size allocated, HDF5
# would fail with "memory allocation failed" (or the child die) instead of the reader's own check.
_CAPPED_READ = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**29, 3 * 2**29))  # 1.5 GiB
from encdec_core.errors import CheckpointError
from encdec_core.formats.tf_h5 import TFH5Reader
try:
    TFH5Reader(sys.argv[1]).close()
    out = {"error": None}
except CheckpointError as e:
    out = {"error": "CheckpointError", "message": str(e)}
# this process's own peak (ru_maxrss would carry over the parent's peak across fork and exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
out["maxrss"] = int(hwm.split()[1]) * 1024
print(json.dumps(out))
"""


@pytest.mark.parametrize("name", sorted(FORGED_ATTRS))
def test_h5_forged_name_list_refused_before_hdf5_allocates(tmp_path, name):
    forge, attr = FORGED_ATTRS[name]
    _keras_file(
        tmp_path / "tf_model.h5", lambda f, g: (g.create_dataset("m/w:0", data=np.ones(3, np.float32)), ["m/w:0"])[1]
    )
    with TFH5Reader(tmp_path) as r:  # the file before forging reads
        assert r.keys() == ["w"]
    raw = bytearray((tmp_path / "tf_model.h5").read_bytes())
    forge(raw, attr)
    (tmp_path / "tf_model.h5").write_bytes(bytes(raw))
    proc = subprocess.run(
        [sys.executable, "-c", _CAPPED_READ, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS,  # a hang guard only: the read takes ~0.3 s, the import more on a loaded machine
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # no MemoryError, no crash
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "CheckpointError", out
    message = out["message"]
    assert str(tmp_path / "tf_model.h5") in message and f"'{attr.decode()}'" in message, message
    assert "declare" in message and "allocation" not in message, message  # our check, not HDF5 failing
    assert out["maxrss"] < MAX_RSS_GROWTH, out


def test_h5_name_list_scan_sees_a_changed_file(tmp_path):
    """The byte scan is cached per file version: a forged file written in place of a good one is refused."""
    build = lambda f, g: (g.create_dataset("m/w:0", data=np.ones(3, np.float32)), ["m/w:0"])[1]  # noqa: E731
    _keras_file(tmp_path / "tf_model.h5", build)
    with TFH5Reader(tmp_path) as r:
        assert r.get("w").tolist() == [1.0, 1.0, 1.0]
    raw = bytearray((tmp_path / "tf_model.h5").read_bytes())
    _forge_shape(raw, b"weight_names")
    forged = tmp_path / "forged.h5"
    forged.write_bytes(bytes(raw))
    os.replace(forged, tmp_path / "tf_model.h5")
    with pytest.raises(CheckpointError, match="weight_names"):
        TFH5Reader(tmp_path)


def test_h5_datasets_sharing_bytes_refused(tmp_path):
    """Two listed weights that are one dataset (hard links): together they declare more than the file."""

    def shared(f, g):
        g.create_dataset("m/a:0", data=np.ones(2**16, np.float32))  # 256 KiB, most of the file
        g["m/b:0"] = g["m/a:0"]  # a second hard link to the same bytes
        return ["m/a:0", "m/b:0"]

    _keras_file(tmp_path / "tf_model.h5", shared)
    with pytest.raises(CheckpointError, match="declare .* bytes in all"):
        TFH5Reader(tmp_path)


def _legacy_bin(numel: int, payload: int) -> bytes:
    """A legacy (pre-zip) torch.save file whose one storage claims ``numel`` floats and holds ``payload``."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    sentinel = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if obj is sentinel else None

    class Rebuild:
        def __reduce__(self):
            import collections

            return torch._utils._rebuild_tensor_v2, (sentinel, 0, (numel,), (1,), False, collections.OrderedDict())

    buf = io.BytesIO()
    for obj in (
        MAGIC_NUMBER,
        PROTOCOL_VERSION,
        {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ):
        pickle.dump(obj, buf, protocol=2)
    Pickler(buf, protocol=2).dump({"w": Rebuild()})
    pickle.dump(["0"], buf, protocol=2)
    buf.write(struct.pack("<q", payload) + b"\0" * (4 * payload))
    return buf.getvalue()


class RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned > /tmp/encdec-fuzz-pwned",)


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}))
        z.writestr("archive/data/0", b"\0" * (64 * 2**20))  # 64 MiB of zeros in ~64 KiB
    return buf.getvalue()


def _pickle_deep() -> bytes:  # 100000 nested lists: fine for an iterative unpickler, fatal for a recursive one
    return b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."


HOSTILE_BIN = {
    "legacy file claiming 4e11 bytes": lambda: _legacy_bin(10**11, 1),
    "legacy file claiming 4 GB": lambda: _legacy_bin(10**9, 1),
    "pickle that runs code": lambda: pickle.dumps({"w": RunsCode()}),
    "zip bomb (deflated records)": _zip_bomb,
    "deeply nested pickle": _pickle_deep,
    "not a state dict": lambda: pickle.dumps([1, 2, 3]),
    "empty": lambda: b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BIN))
def test_hostile_bin(tmp_path, name):
    (tmp_path / "pytorch_model.bin").write_bytes(HOSTILE_BIN[name]())
    before = _rss()
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as err:
        read_all("bin", tmp_path)
    assert _rss() - before < MAX_RSS_GROWTH
    assert not Path("/tmp/encdec-fuzz-pwned").exists()
    if name.startswith("legacy"):  # refused from its declared sizes, before torch allocates them
        assert "declare" in str(err.value)
