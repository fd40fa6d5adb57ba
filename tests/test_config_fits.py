"""An absurd config against a small checkpoint: the same clear error in PyTorch, TF and Flax, before building.

``check_config_fits`` compares the shapes the config gives (from the weight tables' declared
dims) with the checkpoint's headers; the three loaders call it before any layer exists, so
``vocab_size=10**11`` fails in milliseconds instead of allocating (TF) or overflowing inside a
jitted initialiser (Flax).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

from encdec_core.configs import load_config
from encdec_core.errors import ShapeMismatchError
from encdec_core.formats.fit import check_config_fits, misfits

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BACKENDS = {"pt": ("encdec_pt", ""), "tf": ("encdec_tf", "TF"), "flax": ("encdec_flax", "Flax")}


def _cls(backend: str, name: str):
    module, prefix = BACKENDS[backend]  # part classes have the same name in the three, the wrapper a prefix
    return getattr(importlib.import_module(module), prefix + name if name == "EncoderDecoderModel" else name)


CASES = {  # (fixture folder, class, overrides, the weight and the shapes the message must name)
    "encoder vocab": (
        "bert2gpt2/encoder",
        "BertModel",
        {"vocab_size": 10**11},
        "embeddings.word_embeddings.weight: the config gives (100000000000, 36) "
        "(vocab_size=100000000000, hidden_size=36), the checkpoint holds (99, 36)",
    ),
    "decoder positions": (
        "bert2gpt2/decoder",
        "GPT2LMHeadModel",
        {"n_positions": 10**10},
        "transformer.wpe.weight: the config gives (10000000000, 36)",
    ),
    "encoder width": (
        "bert2gpt2/encoder",
        "BertModel",
        {"hidden_size": 3 * 10**9, "num_attention_heads": 3},
        "embeddings.LayerNorm.weight: the config gives (3000000000,)",
    ),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_absurd_config_same_error_in_every_backend(backend, case):
    folder, name, overrides, expected = CASES[case]
    start = time.perf_counter()
    with pytest.raises(ShapeMismatchError) as err:
        _cls(backend, name).from_pretrained(FIXTURES / folder, **overrides)
    assert time.perf_counter() - start < 30  # nothing of that size was built
    message = str(err.value)
    assert message.startswith(f"{FIXTURES / folder}: the config does not fit the checkpoint's weights")
    assert expected in message


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_absurd_composite_config(backend):
    config = load_config(FIXTURES / "bert2gpt2" / "pt")
    config.decoder.vocab_size = 10**11
    with pytest.raises(
        ShapeMismatchError, match=r"decoder\.transformer\.wte\.weight: the config gives \(100000000000, 36\)"
    ):
        _cls(backend, "EncoderDecoderModel").from_pretrained(FIXTURES / "bert2gpt2" / "pt", config=config)


@pytest.mark.parametrize("fmt", ["pt", "pt_sharded", "pt_bin", "tf", "tf_sharded", "flax", "flax_sharded"])
def test_every_fixture_fits_its_own_config(fmt):
    folder = FIXTURES / "bert2gpt2" / fmt
    check_config_fits(load_config(folder), folder)  # no false alarm in any format


def test_misfits_adapts_the_base_prefix_and_lists_every_field():
    config = load_config(FIXTURES / "bert2gpt2" / "decoder")
    config.vocab_size, config.n_embd = 7, 6
    shapes = {"wte.weight": (99, 36), "ln_f.weight": (36,)}  # a base-model checkpoint into the LM
    bad = {key: (want, got, fields) for key, want, got, fields in misfits(config, shapes, role="decoder")}
    assert bad == {
        "wte.weight": ((7, 6), (99, 36), "vocab_size=7, hidden_size=6"),
        "ln_f.weight": ((6,), (36,), "hidden_size=6"),
    }


def test_flax_load_parses_its_msgpack_once(monkeypatch, tmp_path):
    """The fit check's parse of flax_model.msgpack is the one the weights come from; a changed file is parsed again."""
    import shutil

    import numpy as np

    from encdec_core.formats import flax_msgpack
    from encdec_flax import FlaxEncoderDecoderModel

    parsed = []
    parse = flax_msgpack._parse_file
    monkeypatch.setattr(flax_msgpack, "_parse_file", lambda path: parsed.append(path) or parse(path))
    folder = tmp_path / "flax"
    shutil.copytree(FIXTURES / "bert2gpt2" / "flax", folder)
    model = FlaxEncoderDecoderModel.from_pretrained(folder)
    assert parsed == [folder / "flax_model.msgpack"]
    wte = model.params["decoder"]["transformer"]["wte"]["embedding"]
    stored = flax_msgpack.read_flax_msgpack(folder)["decoder/transformer/wte/embedding"]
    assert np.array_equal(np.asarray(wte), stored) and len(parsed) == 2  # nothing left waiting: parsed again

    # a parse waiting for a file that changes before the load is not handed over
    flat = flax_msgpack.read_flax_msgpack(folder)
    flat["decoder/transformer/wte/embedding"] = flat["decoder/transformer/wte/embedding"] + 1
    flax_msgpack.write_flax_msgpack(flat, tmp_path / "changed")
    with flax_msgpack.hand_over():
        flax_msgpack.read_flax_msgpack(folder)
    shutil.copy(tmp_path / "changed" / "flax_model.msgpack", folder / "flax_model.msgpack")  # same size, in place
    count = len(parsed)
    fresh = flax_msgpack.read_flax_msgpack(folder)["decoder/transformer/wte/embedding"]
    assert len(parsed) == count + 1 and np.array_equal(fresh, stored + 1)


def test_misfit_leaves_no_parse_waiting(tmp_path):
    from encdec_core.formats import flax_msgpack

    folder = FIXTURES / "bert2gpt2" / "flax"
    config = load_config(folder)
    config.encoder.vocab_size = 10**11
    with pytest.raises(ShapeMismatchError, match="vocab_size=100000000000"):
        check_config_fits(config, folder, accept=("msgpack",))
    assert not flax_msgpack._handoff
