"""Clocks, memory meters, the machine's limits and each task's cost model.

Memory on CPU is the process's resident set (RSS): before a call, freed memory is handed back
to the OS (``gc.collect`` + glibc ``malloc_trim``) and the kernel's high-water mark is reset
(``/proc/self/clear_refs``); after it, ``VmHWM - VmRSS(before)`` is the most the call added.
On CUDA it is ``torch.cuda.max_memory_allocated`` over ``memory_allocated`` before the call.

Cost model (fp32, 4 bytes a weight; ``B`` batch, ``S`` source, ``T`` new/label tokens, ``n``
beams; ``L, H, I`` layers, width, feed-forward width; ``V`` decoder vocabulary)::

    P_enc   = L_e (4 H_e^2 + 2 H_e I_e)                      encoder matmul weights
    P_kv    = L_d 2 H_e H_d                                   cross-attention K/V (once per source)
    P_step  = L_d (6 H_d^2 + 2 H_d I_d) + V H_d [+ H_d^2]     decoder weights used per token
                                                             ([..]: BERT's head transform)
    F_enc   = 2 B S P_enc + 4 B L_e S^2 H_e
    F_dec(b)= 2 B S P_kv + 2 b T P_step + 2 b L_d H_d (T^2 + 2 T S)
    forward, greedy, sample:  F = F_enc + F_dec(B)           bytes = 4 (P_enc + P_kv + k P_step)
    beam4:                    F = F_enc + F_dec(n B)         with k = 1 (forward) or T (generation:
    train_step:  F = 3 F_forward;  bytes = 3 forward bytes + 28 N   every step reads the decoder)
                 (AdamW reads param, grad, m, v and writes param, m, v: 7 x 4 bytes per parameter N)
    load:        F = 0;            bytes = 2 x checkpoint bytes (one copy of the weights)
    convert:     F = 0;            bytes = 2 x checkpoint bytes (read once, written once; run.convert_rows)

    floor = max(F / GEMM FLOP/s, bytes / copy bandwidth)

Embedding gathers, softmax, LayerNorm and the KV-cache traffic are left out: a floor counts only
work no implementation can avoid, so ``ours / floor`` is an upper bound on the headroom.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
import sys
import time

logger = logging.getLogger("benchmarks")

_LIBC = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL("libc.so.6")
    except OSError:
        pass


# ---------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def trim() -> None:
    """Collect garbage and return freed heap to the OS, so RSS shows what is really in use."""
    gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


class RssMeter:
    """Peak RSS over a baseline (Linux). ``start()`` before, ``peak()`` after; None if unsupported."""

    def start(self) -> None:
        trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _status_kb("VmRSS")
        except OSError:
            self.base = None

    def peak(self) -> int | None:
        hwm = _status_kb("VmHWM")
        return None if self.base is None or hwm is None else max(0, hwm - self.base) * 1024


class CudaMeter:
    def start(self) -> None:
        import torch

        trim()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak(self) -> int:
        import torch

        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - self.base)


def meter(device: str):
    return CudaMeter() if device == "cuda" else RssMeter()


# ---------------------------------------------------------------------- clocks
def timed(fn, sync) -> tuple[float, object]:
    """Seconds one call of ``fn`` takes (``sync`` waits for the device), and its result."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------- machine limits
def machine_limits(device: str, quick: bool = False) -> dict:
    """Measured fp32 GEMM FLOP/s (large square ``torch.matmul``) and copy bandwidth (bytes read + written / s).

    ``quick`` (for --tiny smoke runs) uses smaller operands: faster, less exact.
    """
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = (8192 if device == "cuda" else 2048) // (2 if quick else 1)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    gemm = min(timed(lambda: a @ b, sync)[0] for _ in range(4))  # operands freed on return
    numel = ((1 << 28) if device == "cuda" else (1 << 26)) >> (3 if quick else 0)  # 1 GiB / 256 MiB of fp32
    src, dst = torch.ones(numel, device=dev), torch.empty(numel, device=dev)
    copy = min(timed(lambda: dst.copy_(src), sync)[0] for _ in range(5))
    return {"gemm_n": n, "gemm_flops": 2 * n**3 / gemm, "copy_bytes": 2 * numel * 4, "bandwidth": 2 * numel * 4 / copy}


# ---------------------------------------------------------------------- cost model
def _dims(cfg: dict) -> tuple[int, int, int, int]:
    """(layers, width, feed-forward width, vocabulary) of a BERT/RoBERTa or GPT-2 config.json."""
    if cfg.get("model_type") == "gpt2":
        h = cfg["n_embd"]
        return cfg["n_layer"], h, cfg.get("n_inner") or 4 * h, cfg["vocab_size"]
    return cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]


def task_cost(task: str, enc_cfg: dict, dec_cfg: dict, work, *, n_params: int = 0, ckpt_bytes: int = 0) -> dict:
    """Estimated FLOPs and minimal memory traffic (bytes) of one call of ``task`` (module docstring)."""
    if task == "load":
        return {"flops": 0.0, "bytes": 2.0 * ckpt_bytes}
    le, he, ie, _ = _dims(enc_cfg)
    ld, hd, id_, v = _dims(dec_cfg)
    b, s, t = work.batch, work.source_len, work.new_tokens
    p_enc = le * (4 * he * he + 2 * he * ie)
    p_kv = ld * 2 * he * hd
    p_step = ld * (6 * hd * hd + 2 * hd * id_) + v * hd + (hd * hd if dec_cfg.get("model_type") != "gpt2" else 0)
    f_enc = 2 * b * s * p_enc + 4 * b * le * s * s * he

    def f_dec(rows: int) -> float:
        return 2 * b * s * p_kv + 2 * rows * t * p_step + 2 * rows * ld * hd * (t * t + 2 * t * s)

    beams = 4 if task == "beam4" else 1
    flops = f_enc + f_dec(beams * b)
    steps = 1 if task in ("forward", "train_step") else t
    nbytes = 4.0 * (p_enc + p_kv + steps * p_step)
    if task == "train_step":
        flops, nbytes = 3 * flops, 3 * nbytes + 28.0 * n_params
    return {"flops": float(flops), "bytes": nbytes}


def floor_seconds(cost: dict, limits: dict) -> float:
    return max(cost["flops"] / limits["gemm_flops"], cost["bytes"] / limits["bandwidth"])
