"""conversion.formats: detection of every fixture format, bitwise round trips, one error listing every key, atomic writes.

No deep-learning framework is imported here except by the readers that need one (.bin needs
torch, the msgpack writer flax); every comparison is on numpy arrays, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import conversion.formats as formats
from conversion.flax_msgpack import read_flax_msgpack
from conversion.formats import convert, detect, open_source, read_canonical
from conversion.tf_h5 import read_names
from encdec_core import CheckpointError, InputError
from encdec_core.checkpoint import read_index, save_safetensors
from encdec_core.formats.naming import tables_for
from encdec_core.tables import tied_copies
from tests.conftest import FAMILY_PAIRS, FIXTURES, PAIRS

WARM = FIXTURES / "warm"
# folder -> (format, sharded, kind, architecture)
DETECTED = {
    "bert2gpt2/pt": ("pt", False, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/pt_sharded": ("pt", True, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/pt_bin": ("bin", False, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/pt_bin_sharded": ("bin", True, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/tf": ("h5", False, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/tf_sharded": ("h5", True, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/flax": ("msgpack", False, "encoder-decoder", "bert2gpt2"),
    "bert2gpt2/flax_sharded": ("msgpack", True, "encoder-decoder", "bert2gpt2"),
    "bert2bert_tied/pt_bin": ("bin", False, "encoder-decoder", "bert2bert"),
    "roberta2roberta/tf": ("h5", False, "encoder-decoder", "roberta2roberta"),
    "bert2bert/encoder": ("pt", False, "encoder", "bert"),
    "bert2bert/decoder": ("pt", False, "decoder", "bert"),
    "roberta2roberta/decoder": ("pt", False, "decoder", "roberta"),
    "bert2gpt2/decoder": ("pt", False, "decoder", "gpt2"),
}
# every committed folder of a pair, other than the standalone parts
ALL_PAIRS = PAIRS + FAMILY_PAIRS
FOLDERS = [
    (p, d.name)
    for p in ALL_PAIRS
    for d in sorted((FIXTURES / p).iterdir())
    if d.is_dir() and d.name not in ("encoder", "decoder")
]
STANDALONE = [
    FIXTURES / "bert2bert" / "encoder",
    FIXTURES / "roberta2roberta" / "decoder",
    FIXTURES / "bert2gpt2" / "decoder",
    WARM / "bert",
    WARM / "gpt2",
    *(WARM / n for n in ("xlmr", "bertgen", "bertgen_lm", "electra", "electra_lm", "distilbert", "bart_lm", "bertrel")),
]
TARGETS = ["tf", "flax", "h5", "msgpack", "bin"]


def same_arrays(a: dict, b: dict, what: str = "") -> None:
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:10]}"
    for k, v in a.items():
        assert b[k].dtype == v.dtype and b[k].shape == v.shape and np.array_equal(b[k], v), f"{what}: {k}"


def canonical(folder) -> dict:
    return read_canonical(folder)[2]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("folder", DETECTED)
def test_detect_names_format_kind_and_architecture(folder):
    d = detect(FIXTURES / folder)
    assert (d.format, d.sharded, d.kind, d.architecture) == DETECTED[folder]
    assert all((FIXTURES / folder / f).is_file() for f in d.files)


def test_detect_reads_safetensors_metadata_and_refuses_what_is_not_a_checkpoint(tmp_path):
    for to in ("tf", "flax"):
        out = convert(FIXTURES / "bert2bert" / "pt", tmp_path / to, to=to)
        assert detect(out).format == to and detect(out).kind == "encoder-decoder"
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        detect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no weights found; expected model\.safetensors.*holds \[\]"):
        detect(tmp_path / "empty")


@pytest.mark.parametrize("pair,fmt", FOLDERS, ids=[f"{p}-{f}" for p, f in FOLDERS])
def test_every_fixture_format_reads_as_the_canonical_arrays(pair, fmt):
    """h5, msgpack, .bin and their shards, through the tables, give the committed model.safetensors bit for bit."""
    same_arrays(load_file(FIXTURES / pair / "pt" / "model.safetensors"), canonical(FIXTURES / pair / fmt), fmt)


@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_round_trips_through_every_format_are_bitwise(tmp_path, pair):
    """PT -> X -> PT for every format X: the same model.safetensors, byte for byte.

    A ``tie_encoder_decoder`` checkpoint is written with both copies of the shared weights
    (Transformers 5.x ignores the tie), so PT -> PT adds the encoder's copies to 4.57's
    one-copy file, equal to the decoder's, and every round trip gives that two-copy file back.
    """
    src = FIXTURES / pair / "pt"
    ref = load_file(src / "model.safetensors")
    first = convert(src, tmp_path / "pt", to="pt")
    written = load_file(first / "model.safetensors")
    config = detect(src).config
    if config.tie_encoder_decoder:
        copies = tied_copies(config)
        full = tables_for(config, "encoder-decoder").full
        shared = [p for p in full if p.pt.startswith("encoder.") and not p.pt.startswith("encoder.pooler.")]
        assert (
            len(copies) == len(shared) == {"bert2bert_tied": 37, "bertgen2bertgen_tied": 36}[pair]
        )  # all but a pooler
        assert (
            set(written)
            == set(ref) | {t.pt for t in copies}
            == {p.pt for p in tables_for(config, "encoder-decoder").full}
        )
        for t in copies:
            assert t.pt not in ref and np.array_equal(written[t.pt], ref[t.source]), t.pt
        same_arrays({k: written[k] for k in ref}, ref, "decoder's copies")
    else:
        assert (first / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    for to in TARGETS:
        out = convert(src, tmp_path / to, to=to)
        det, _, arrays = read_canonical(out)
        assert det.format == to
        same_arrays(ref, arrays, to)
        back = convert(out, tmp_path / f"{to}-back", to="pt")
        assert (back / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes(), to
        assert digest(back) == digest(first)  # config.json and generation_config.json copied verbatim
    assert {k: v for k, v in digest(first).items() if k != "model.safetensors"} == {
        k: v for k, v in digest(src).items() if k != "model.safetensors"
    }


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2", "roberta2roberta"])
def test_tf_and_flax_safetensors_use_transformers_names(tmp_path, pair):
    """Key sets as Transformers 4.57 writes them (fact sheet: its TF and Flax save_pretrained(safe_serialization=True))."""
    facts = json.loads((FIXTURES / "hf_names" / f"{pair}.json").read_text())
    tf = load_file(convert(FIXTURES / pair / "pt", tmp_path / "tf", to="tf") / "model.safetensors")
    fx = load_file(convert(FIXTURES / pair / "pt", tmp_path / "fx", to="flax") / "model.safetensors")
    assert set(tf) == set(facts["tf_safetensors_keys"])
    assert set(fx) == {name.replace("/", ".") for name, _ in facts["flax_params"]}
    with open_source(tmp_path / "tf") as src:
        assert src.format == "tf" and not src.unknown


def _h5_layout(path: Path) -> dict:
    """Groups, weight names without the model scope, dataset shapes and dtypes: the structure of a tf_model.h5."""
    out = {}
    with h5py.File(path, "r") as f:
        out["layer_names"] = read_names(f, "layer_names")
        for layer in [*out["layer_names"], "top_level_model_weights"]:
            names = read_names(f[layer], "weight_names")
            out[layer] = {n.split("/", 1)[1]: (f[layer][n].shape, f[layer][n].dtype.str) for n in names}
    return out


@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if (FIXTURES / p / "tf").is_dir()])
def test_h5_to_canonical_to_h5_keeps_arrays_and_structure(tmp_path, pair):
    orig = FIXTURES / pair / "tf"
    back = convert(convert(orig, tmp_path / "pt", to="pt"), tmp_path / "h5", to="h5")
    same_arrays(canonical(orig), canonical(back))
    assert _h5_layout(back / "tf_model.h5") == _h5_layout(orig / "tf_model.h5")
    direct = convert(orig, tmp_path / "direct", to="h5")  # h5 -> h5 keeps the model scope and Keras version
    with h5py.File(orig / "tf_model.h5", "r") as a, h5py.File(direct / "tf_model.h5", "r") as b:
        assert a.attrs["keras_version"] == b.attrs["keras_version"]
        assert set(read_names(a["encoder"], "weight_names")) == set(read_names(b["encoder"], "weight_names"))


@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if (FIXTURES / p / "flax").is_dir()])
def test_msgpack_to_canonical_to_msgpack_keeps_arrays_and_tree(tmp_path, pair):
    orig = FIXTURES / pair / "flax"
    back = convert(convert(orig, tmp_path / "pt", to="pt"), tmp_path / "mp", to="msgpack")
    a, b = read_flax_msgpack(orig), read_flax_msgpack(back)
    same_arrays(a, b)  # same paths (the tree's structure), dtypes and bits
    if list(a) == sorted(a):  # Transformers' tree in jax's sorted order: the very same bytes
        assert (back / "flax_model.msgpack").read_bytes() == (orig / "flax_model.msgpack").read_bytes()


@pytest.mark.parametrize("folder", STANDALONE, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_standalone_encoders_and_decoders_round_trip(tmp_path, folder):
    ref = canonical(folder)
    kind = detect(folder).kind
    for to in ("tf", "h5", "flax", "msgpack"):
        out = convert(folder, tmp_path / to, to=to)
        assert detect(out).kind == kind
        same_arrays(ref, canonical(out), f"{folder.name} {to}")


def test_sharded_writes_read_back(tmp_path):
    src = FIXTURES / "bert2gpt2" / "pt"
    for to, index in [
        ("pt", "model.safetensors.index.json"),
        ("tf", "model.safetensors.index.json"),
        ("h5", "tf_model.h5.index.json"),
        ("msgpack", "flax_model.msgpack.index.json"),
    ]:
        out = convert(src, tmp_path / to, to=to, max_shard_size="40KB")
        det = detect(out)
        assert det.sharded and det.files[0] == index and len(det.files) > 3, to
        same_arrays(canonical(src), canonical(out), to)


def test_transformers_tf_shard_index_with_scoped_names_is_read(tmp_path):
    """HF's TF safetensors shards hold scope-free keys while its index keeps the model scope."""
    out = convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "tf", to="tf", max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    index["weight_map"] = {f"tf_encoder_decoder_model/{k}": v for k, v in index["weight_map"].items()}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    same_arrays(canonical(FIXTURES / "bert2gpt2" / "pt"), canonical(out))


def test_bf16_survives_every_safetensors_and_msgpack_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    src = tmp_path / "bf16"
    arrays = {k: v.astype(ml_dtypes.bfloat16) for k, v in canonical(FIXTURES / "bert2gpt2" / "pt").items()}
    save_safetensors(arrays, src)
    (src / "config.json").write_bytes((FIXTURES / "bert2gpt2" / "pt" / "config.json").read_bytes())
    for to in ("tf", "flax", "msgpack", "bin"):
        out = convert(src, tmp_path / to, to=to)
        with open_source(out) as s:
            assert {s.dtype(k) for k in s.keys()} == {"BF16"}, to
        back = convert(out, tmp_path / f"{to}-back", to="pt")
        assert (back / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes(), to
    with pytest.raises(InputError, match="tf_model.h5.*cannot hold bfloat16"):  # HDF5 would store opaque bytes
        convert(src, tmp_path / "h5", to="h5")


def test_one_error_lists_every_key_not_consumed_and_every_weight_not_filled(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((FIXTURES / "bert2bert" / "pt" / "config.json").read_bytes())
    arrays = load_file(FIXTURES / "bert2bert" / "pt" / "model.safetensors")
    gone = ["decoder.bert.encoder.layer.1.output.dense.weight", "encoder.pooler.dense.bias"]
    for k in gone:
        del arrays[k]
    arrays["decoder.bert.encoder.layer.1.output.dense.weights"] = np.zeros(3, np.float32)
    arrays["extra.thing"] = np.zeros(2, np.float32)
    save_file(arrays, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        convert(bad, tmp_path / "out", to="tf")
    msg = str(err.value)
    assert "2 source key(s) not consumed" in msg and "2 target weight(s) not filled" in msg
    for k in [*gone, "decoder.bert.encoder.layer.1.output.dense.weights", "extra.thing"]:
        assert f"    {k}\n" in msg + "\n", k
    assert not (tmp_path / "out").exists()


def test_unknown_tf_names_are_listed_by_their_stored_names(tmp_path):
    out = convert(FIXTURES / "bert2bert" / "pt", tmp_path / "tf", to="tf")
    arrays = load_file(out / "model.safetensors")
    arrays["decoder/bert/encoder/layer_._9/output/dense/kernel:0"] = np.zeros(1, np.float32)
    save_file(arrays, out / "model.safetensors", metadata={"format": "tf"})
    with pytest.raises(CheckpointError, match=r"1 source key\(s\) not consumed.*\n    decoder/bert/encoder/layer_\._9"):
        read_canonical(out)


def test_source_is_never_touched(tmp_path):
    for fmt in ("pt", "tf", "flax"):
        src = FIXTURES / "bert2bert_tied" / fmt
        before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in src.iterdir()}
        hashes = digest(src)
        for to in ("pt", "h5", "msgpack"):
            convert(src, tmp_path / f"{fmt}-{to}", to=to)
        assert digest(src) == hashes
        assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in src.iterdir()} == before


def test_failed_conversion_leaves_the_destination_as_it_was(tmp_path, monkeypatch):
    dst = convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "dst", to="msgpack")
    (dst / "tokenizer.json").write_text("{}")
    before = digest(dst)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats, "write_weights", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(FIXTURES / "bert2gpt2" / "pt", dst, to="h5", overwrite=True)
    assert digest(dst) == before
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]  # no temporary folder left behind


def test_overwrite_is_explicit_and_user_files_are_kept(tmp_path):
    dst = convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "dst", to="msgpack")
    (dst / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="already holds a checkpoint.*overwrite"):
        convert(FIXTURES / "bert2gpt2" / "pt", dst, to="h5")
    convert(FIXTURES / "bert2gpt2" / "pt", dst, to="h5", overwrite=True)
    assert sorted(os.listdir(dst)) == ["config.json", "generation_config.json", "tf_model.h5", "tokenizer.json"]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(InputError, match="to= expected one of pt, tf, flax, bin, h5, msgpack"):
        convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "x", to="onnx")
    with pytest.raises(InputError, match="overlaps the source"):
        convert(FIXTURES / "bert2gpt2" / "pt", FIXTURES / "bert2gpt2" / "pt" / "sub", to="tf")


def test_progress_bar_over_tensors(tmp_path, capsys):
    convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "a", to="tf", progress=True)
    assert "read pt" in capsys.readouterr().err
    convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "b", to="tf")  # small: no bar by default
    assert "read pt" not in capsys.readouterr().err


def test_shard_index_written_for_tf_safetensors_is_valid(tmp_path):
    out = convert(FIXTURES / "bert2gpt2" / "pt", tmp_path / "tf", to="tf", max_shard_size="40KB")
    index = read_index(out / "model.safetensors.index.json")
    assert all(k.endswith(":0") for k in index.weight_map)


def test_streamed_msgpack_is_flax_serialization_byte_for_byte(tmp_path):
    """write_flax_msgpack streams one array at a time; the bytes are flax.serialization.msgpack_serialize's."""
    from flax import serialization

    from conversion.flax_msgpack import unflatten_tree, write_flax_msgpack

    ml_dtypes = pytest.importorskip("ml_dtypes")
    flat = read_flax_msgpack(FIXTURES / "bert2gpt2" / "flax")
    flat.update(
        {
            "x/bf16": np.ones((3, 2), ml_dtypes.bfloat16),
            "x/int": np.arange(5),
            "x/scalar": np.asarray(3.0),
            "x/transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,
        }
    )
    write_flax_msgpack(flat, tmp_path)
    tree = unflatten_tree(dict(sorted(flat.items())))
    assert (tmp_path / "flax_model.msgpack").read_bytes() == serialization.msgpack_serialize(tree)
