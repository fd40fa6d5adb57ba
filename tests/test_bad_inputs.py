"""Bad calls give the same InputError, naming the argument, in every backend (no deep TypeError, no NaN)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES

from encdec_core.errors import GenerationError, InputError

BACKENDS = ["pt", "tf", "flax"]
_MODELS: dict[str, object] = {}


def model(backend: str):
    if backend not in _MODELS:
        path = FIXTURES / "bert2gpt2" / "pt"
        if backend == "pt":
            from encdec_pt import EncoderDecoderModel as cls
        elif backend == "tf":
            from encdec_tf import TFEncoderDecoderModel as cls
        else:
            from encdec_flax import FlaxEncoderDecoderModel as cls
        _MODELS[backend] = cls.from_pretrained(path)
    return _MODELS[backend]


def call(backend: str, **arrays):
    """Run the backend's forward on numpy inputs; return logits and loss as numpy."""
    m = model(backend)
    if backend == "pt":
        import torch

        with torch.no_grad():
            out = m(**{k: torch.from_numpy(v) for k, v in arrays.items()})
        return out.logits.numpy(), None if out.loss is None else out.loss.numpy()
    out = m(**arrays)
    return np.asarray(out.logits), None if out.loss is None else np.asarray(out.loss)


def ids(*shape, low=3, high=99):
    return np.random.default_rng(0).integers(low, high, shape).astype(np.int64)


CASES = [
    ("input_ids has length 50", dict(input_ids=ids(2, 50), labels=ids(2, 5))),
    ("labels has length 50", dict(input_ids=ids(2, 5), labels=ids(2, 50))),
    ("input_ids is an empty batch", dict(input_ids=ids(0, 5), labels=ids(0, 3))),
    ("labels has batch size 3", dict(input_ids=ids(2, 5), labels=ids(3, 4))),
    (
        "attention_mask has shape \\(2, 6\\)",
        dict(input_ids=ids(2, 5), attention_mask=np.ones((2, 6), np.int64), labels=ids(2, 4)),
    ),
    (
        "decoder_attention_mask has shape \\(2, 3\\)",
        dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4), decoder_attention_mask=np.ones((2, 3), np.int64)),
    ),
    ("labels hold -5", dict(input_ids=ids(2, 5), labels=np.array([[-5, 3], [4, 5]]))),
    ("labels hold 500", dict(input_ids=ids(2, 5), labels=np.array([[500, 3], [4, 5]]))),
    ("input_ids holds token id 120", dict(input_ids=np.array([[5, 120]]), labels=ids(1, 2))),
    ("input_ids expected shape \\(batch, length\\)", dict(input_ids=ids(5), labels=ids(2, 4))),
    ("decoder_input_ids has batch size 1", dict(input_ids=ids(2, 5), decoder_input_ids=ids(1, 4))),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("match,arrays", CASES, ids=[c[0].split(" ")[0] + "-" + str(i) for i, c in enumerate(CASES)])
def test_bad_call_is_a_named_input_error(backend, match, arrays):
    with pytest.raises(InputError, match=match):
        call(backend, **arrays)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_padding_row_gives_finite_outputs(backend):
    src = np.array([[0, 0, 0], [5, 6, 7]])
    logits, loss = call(backend, input_ids=src, attention_mask=(src != 0).astype(np.int64), labels=ids(2, 3))
    assert np.isfinite(logits).all() and np.isfinite(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_longer_than_the_decoder_positions(backend):
    src = ids(1, 4)
    if backend == "pt":
        import torch

        src = torch.from_numpy(src)
    with pytest.raises(GenerationError, match="exceeds the decoder's 40 positions"):
        model(backend).generate(src, max_new_tokens=60)


def test_pt_refuses_numpy_ids_by_name():
    with pytest.raises(InputError, match="input_ids expected a torch.Tensor"):
        model("pt").generate(ids(1, 4))


# ------------------------------------------------------------------------------- bad files, every backend
def _cls(backend: str):
    if backend == "pt":
        from encdec_pt import EncoderDecoderModel as cls
    elif backend == "tf":
        from encdec_tf import TFEncoderDecoderModel as cls
    else:
        from encdec_flax import FlaxEncoderDecoderModel as cls
    return cls


def _copy_fixture(tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "bert2gpt2" / "pt", folder)
    return folder


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])


def _bad_header(folder):
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[:8] = (10**12).to_bytes(8, "little")  # header length far past the end of the file
    path.write_bytes(bytes(raw))


def _no_weights(folder):
    (folder / "model.safetensors").unlink()


def _wrong_shape(folder):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(folder / "model.safetensors")
    arrays["decoder.transformer.wte.weight"] = arrays["decoder.transformer.wte.weight"][:50]
    save_file(arrays, folder / "model.safetensors", metadata={"format": "pt"})


def _bad_json(folder):
    (folder / "config.json").write_text('{"model_type": "encoder-decoder", ')


def _unknown_type(folder):
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder"]["model_type"] = "t5"
    (folder / "config.json").write_text(json.dumps(cfg))


FILE_CASES = [
    (_truncate, "CheckpointError", "model.safetensors"),
    (_bad_header, "CheckpointError", "model.safetensors"),
    (_no_weights, "CheckpointError", "no .*weights"),
    (_wrong_shape, "ShapeMismatchError|CheckpointError", "decoder.transformer.wte.weight"),
    (_bad_json, "ConfigError", "config.json"),
    (_unknown_type, "ConfigError", "t5"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage,error,match", FILE_CASES, ids=[c[0].__name__.strip("_") for c in FILE_CASES])
def test_damaged_checkpoint_gives_the_same_error_in_every_backend(backend, damage, error, match, tmp_path):
    from encdec_core import errors

    folder = _copy_fixture(tmp_path)
    damage(folder)
    kinds = tuple(getattr(errors, name) for name in error.split("|"))
    with pytest.raises(kinds, match=match):
        _cls(backend).from_pretrained(folder)
