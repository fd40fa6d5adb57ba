"""PyTorch DDP and FSDP2 on 2 CPU processes (gloo) equal one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from tolerances import ATOL, DIST_PARAM_ATOL

from encdec_pt import EncoderDecoderModel

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "distributed_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(mode: str, fixture: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(WORKER), mode, str(fixture), str(out)]
    if mode != "single":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(_free_port()), *cmd[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _run("single", FIXTURES / "bert2gpt2" / "pt", out)
    return load_file(out / "params.safetensors")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(mode, single, tmp_path):
    _run(mode, FIXTURES / "bert2gpt2" / "pt", tmp_path)
    sharded = load_file(tmp_path / "params.safetensors")  # read back from the checkpoint rank 0 wrote
    assert sharded.keys() == single.keys()
    worst = max((sharded[k] - single[k]).abs().max().item() for k in single)
    assert worst <= DIST_PARAM_ATOL, f"{mode}: max parameter difference {worst:.2e}"
    start = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt").state_dict()
    moved = [k for k in single if not torch.equal(single[k], start[k])]
    assert len(moved) > 0.9 * len(single)  # the steps did train
    if mode == "fsdp":
        _loads_in_every_backend(tmp_path / "checkpoint")


def _loads_in_every_backend(folder: Path) -> None:
    """The checkpoint written from the sharded run: same logits in PyTorch, TensorFlow and Flax."""
    import numpy as np

    from encdec_flax import FlaxEncoderDecoderModel
    from encdec_tf import TFEncoderDecoderModel

    src, labels = np.array([[5, 6, 7, 8]]), np.array([[9, 10, 11]])
    with torch.no_grad():
        ref = EncoderDecoderModel.from_pretrained(folder)(input_ids=torch.from_numpy(src),
                                                          labels=torch.from_numpy(labels)).logits.numpy()
    for cls in (TFEncoderDecoderModel, FlaxEncoderDecoderModel):
        logits = np.asarray(cls.from_pretrained(folder)(input_ids=src, labels=labels).logits)
        assert np.abs(logits - ref).max() <= ATOL["float32"], cls.__name__


def test_every_trainable_parameter_gets_a_gradient():
    """What lets plain DistributedDataParallel(model) run without find_unused_parameters."""
    for pair in ("bert2gpt2", "bert2bert", "roberta2roberta", "bert2gpt2_proj", "bert2bert_tied"):
        model = EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
        model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[8, 9]])).loss.backward()
        starved = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not starved, f"{pair}: {starved}"
        if model.encoder.pooler is not None:  # frozen, not dropped: still loaded and saved
            assert not model.encoder.pooler.dense.weight.requires_grad
            assert "encoder.pooler.dense.weight" in model.state_dict_to_save()
