"""PyTorch DDP and FSDP2 over 2 gloo ranks equal one process on the same global batch.

Two ways: one ``torchrun`` with 2 processes, and two ``torchrun`` launches of one process each
meeting at a c10d rendezvous on 127.0.0.1, as two nodes would (the commands docs/scaling.md shows).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from multinode import PYTHON, env, run_on_ports, run_together, torchrun
from safetensors.torch import load_file
from tolerances import ATOL, DIST_PARAM_ATOL

from encdec_pt import EncoderDecoderModel

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "distributed_worker.py"
FIXTURE = FIXTURES / "bert2gpt2" / "pt"
TIMEOUT = 240  # seconds for one job; a tiny model takes ~15 s, ~60 s with both cores busy
# --standalone: the rendezvous store listens on a port the kernel picks (port 0), so concurrent
# jobs on one machine cannot collide (a port chosen before the launch may be taken meanwhile)
ONE_NODE = ["--standalone", "--nproc-per-node", "2"]


def _run(mode: str, out: Path, nodes: int = 1) -> dict[str, torch.Tensor]:
    script = [str(WORKER), mode, str(FIXTURE), str(out)]
    if mode == "single":
        run_together([[PYTHON, *script]], [env()], out / "logs", timeout=TIMEOUT)
    elif nodes == 1:
        run_together(
            [[PYTHON, "-m", "torch.distributed.run", *ONE_NODE, *script]], [env()], out / "logs", timeout=TIMEOUT
        )
    else:  # the rendezvous port is known to both nodes before either starts: launched again if it was taken

        def launch(ports):
            cmds = [[PYTHON, "-m", "torch.distributed.run", *torchrun(node, ports[0], script)] for node in range(nodes)]
            return cmds, [env()] * nodes

        run_on_ports(launch, 1, out / "logs", timeout=TIMEOUT)
    return load_file(out / "params.safetensors")  # read back from the checkpoint rank 0 wrote


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run("single", tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("nodes", [1, 2], ids=["1node", "2nodes"])
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(mode, nodes, single, tmp_path):
    sharded = _run(mode, tmp_path, nodes)
    assert sharded.keys() == single.keys()
    worst = max((sharded[k] - single[k]).abs().max().item() for k in single)
    assert worst <= DIST_PARAM_ATOL, f"{mode} on {nodes} node(s): max parameter difference {worst:.2e}"
    start = EncoderDecoderModel.from_pretrained(FIXTURE).state_dict()
    moved = [k for k in single if not torch.equal(single[k], start[k])]
    assert len(moved) > 0.9 * len(single)  # the steps did train
    if mode == "fsdp":
        _loads_in_every_backend(tmp_path / "checkpoint")


def test_docs_show_the_tested_commands():
    """docs/scaling.md gives the launches these tests run (its port and script in place of ours)."""
    page = (ROOT / "docs" / "scaling.md").read_text()
    for cmd in [ONE_NODE + ["train.py"], *(torchrun(node, 29400, ["train.py"]) for node in (0, 1))]:
        line = shlex.join(["torchrun", *cmd])
        assert line in page, f"docs/scaling.md does not show `{line}`"


def _loads_in_every_backend(folder: Path) -> None:
    """The checkpoint written from the sharded run: same logits in PyTorch, TensorFlow and Flax."""
    import numpy as np

    from encdec_flax import FlaxEncoderDecoderModel
    from encdec_tf import TFEncoderDecoderModel

    src, labels = np.array([[5, 6, 7, 8]]), np.array([[9, 10, 11]])
    with torch.no_grad():
        ref = EncoderDecoderModel.from_pretrained(folder)(
            input_ids=torch.from_numpy(src), labels=torch.from_numpy(labels)
        ).logits.numpy()
    for cls in (TFEncoderDecoderModel, FlaxEncoderDecoderModel):
        logits = np.asarray(cls.from_pretrained(folder)(input_ids=src, labels=labels).logits)
        diff = np.abs(logits - ref).max()
        assert diff <= ATOL["float32"], f"{cls.__name__}: logits differ from PyTorch's by {diff:.1e}"


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
