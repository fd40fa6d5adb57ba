"""A few AdamW steps of a fixture model, on one process or under torchrun (DDP / FSDP2, gloo).

Usage: ``python tests/distributed_worker.py {single,ddp,fsdp} FIXTURE_DIR OUT_DIR`` (the two
sharded modes under ``torchrun``: 2 processes on one node, or 2 nodes of one process each).
Writes the final parameters to ``OUT_DIR/params.safetensors`` and the checkpoint to
``OUT_DIR/checkpoint`` (rank 0). The global batch is 4 rows; each of 2 ranks takes 2. Labels
have no -100, so every rank's mean loss covers the same number of tokens and the averaged
gradient equals the global one.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from encdec_pt import EncoderDecoderModel
from encdec_pt.distributed import save_sharded, shard_model

STEPS, BATCH = 3, 4
# Adam divides the first moment by the root of the second: for a weight whose true gradient is
# zero (an attention key bias: softmax ignores a shift shared by all keys) it turns rounding
# noise (~1e-9, different in a 2-rank sum) into a full-size step unless eps dominates the noise.
EPS = 1e-5
# a collective that waits this long means a peer is gone: fail then, not after gloo's 30 minutes
TIMEOUT = timedelta(seconds=120)


def main(mode: str, fixture: Path, out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rank, world = 0, 1
    if mode != "single":
        dist.init_process_group("gloo", timeout=TIMEOUT)
        rank, world = dist.get_rank(), dist.get_world_size()
    model = EncoderDecoderModel.from_pretrained(fixture)
    model.eval()  # no dropout: ranks and the single run must see the same function
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 99, (STEPS, BATCH, 9), generator=g)
    labels = torch.randint(3, 99, (STEPS, BATCH, 5), generator=g)
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp":
        model = shard_model(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=EPS)
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    for step in range(STEPS):
        loss = model(input_ids=src[step, rows], labels=labels[step, rows]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    inner = model.module if mode == "ddp" else model
    out.mkdir(parents=True, exist_ok=True)
    if mode == "fsdp":
        save_sharded(inner, out / "checkpoint")
    elif rank == 0:
        inner.save_pretrained(out / "checkpoint")
    if rank == 0:
        again = EncoderDecoderModel.from_pretrained(out / "checkpoint")
        save_file({k: v.clone() for k, v in again.state_dict().items()}, out / "params.safetensors")
    if mode != "single":
        # Leave together: otherwise rank 1 closes its gloo connections while rank 0 is still
        # writing the checkpoint, and which side closes first depends on the scheduler
        dist.barrier()
        dist.destroy_process_group()


def leave() -> None:
    """End the process without the interpreter's finalization, once every output is written.

    torch 2.13's ProcessGroupGloo frees a finished collective on its own worker thread, some time
    after ``wait()`` has returned; a barrier holds the works queued before it (FSDP2's all-gathers),
    and those hold tensors with Python objects. When the main thread is already in ``Py_Finalize``
    by then (a loaded machine), freeing them takes the GIL, CPython ends the thread, and the forced
    unwind through a noexcept frame calls ``std::terminate``: SIGABRT after all the work is done
    (seen in 1 of 40 runs with both cores busy; docs/scaling.md gives the core's backtrace). The
    group's worker threads still run after ``destroy_process_group``; leaving through ``os._exit``
    makes the exit status the work's.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    leave()
