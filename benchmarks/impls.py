"""The registry: framework -> {"ours": Impl, "theirs": Impl}, and the shared workload.

An ``Impl`` knows how to import its class, warm-start a model from two checkpoint folders,
put it on a device with the workload's inputs, and hand back one zero-argument callable per
task (the thing that is timed). PyTorch's two sides differ only in the class they load, since
encdec keeps Transformers' API; TensorFlow and Flax will be two more ``Impl`` subclasses and
two more lines in :data:`REGISTRY` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("benchmarks")

TASKS = ("load", "forward", "greedy", "beam4", "sample", "train_step", "convert")
GEN_KWARGS = {  # on top of input_ids, attention_mask, max_new_tokens, eos_token_id=None
    "greedy": dict(num_beams=1, do_sample=False),
    "beam4": dict(num_beams=4, do_sample=False),
    "sample": dict(num_beams=1, do_sample=True, top_k=50, top_p=0.9),
}


@dataclass(frozen=True)
class Workload:
    """The inputs every implementation gets: random ids (seeded), no padding, EOS disabled."""

    batch: int = 4
    source_len: int = 128
    new_tokens: int = 32
    decoder_start_token_id: int = 1
    pad_token_id: int = 0
    first_id: int = 5  # ids below are left to special tokens
    seed: int = 0

    def arrays(self, enc_vocab: int, dec_vocab: int) -> dict[str, Any]:
        """numpy int64 input_ids, attention_mask (B, S) and labels (B, T): framework-neutral."""
        import numpy as np

        rng = np.random.default_rng(self.seed)
        return {
            "input_ids": rng.integers(self.first_id, enc_vocab, (self.batch, self.source_len), dtype=np.int64),
            "attention_mask": np.ones((self.batch, self.source_len), dtype=np.int64),
            "labels": rng.integers(self.first_id, dec_vocab, (self.batch, self.new_tokens), dtype=np.int64),
        }


def transformers_env(frameworks) -> None:
    """Keep Transformers from importing TF/Flax unless those rows are benchmarked (it is slow and noisy)."""
    os.environ.setdefault("USE_TF", "1" if "tf" in frameworks else "0")
    os.environ.setdefault("USE_FLAX", "1" if "flax" in frameworks else "0")
    os.environ.setdefault("USE_TORCH", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class State:
    """A loaded model on its device, the workload's inputs there, and per-task scratch (optimizer)."""

    model: Any
    inputs: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class Impl:
    """One side (ours / theirs) of one framework. Subclasses fill in the framework-specific parts."""

    framework = ""

    def __init__(self, side: str, module: str, attr: str):
        self.side, self.module, self.attr = side, module, attr

    @property
    def name(self) -> str:
        return f"{self.framework}:{self.side}"

    def unavailable(self) -> str | None:
        """Why this side cannot run here (its package is missing), or None."""
        top = self.module.split(".")[0]
        return None if importlib.util.find_spec(top) else f"{top} not installed"

    def model_class(self) -> type:
        if self.module.startswith("transformers"):
            import transformers

            transformers.logging.set_verbosity_error()  # warm-start warnings are expected
        return getattr(importlib.import_module(self.module), self.attr)

    def load(self, enc_dir, dec_dir) -> Any:
        return self.model_class().from_encoder_decoder_pretrained(str(enc_dir), str(dec_dir))

    # framework-specific
    def prepare(self, model, work: Workload, arrays: dict, device: str) -> State: ...
    def task(self, name: str, state: State, work: Workload) -> Callable[[], Any]: ...
    def sync(self, device: str) -> None: ...
    def num_params(self, model) -> int: ...


class TorchImpl(Impl):
    framework = "pt"

    def prepare(self, model, work, arrays, device):
        import torch

        model.to(device)
        for obj in (model.config, getattr(model, "generation_config", None)):
            if obj is not None:  # EOS disabled: every row generates exactly new_tokens tokens
                obj.decoder_start_token_id, obj.pad_token_id = work.decoder_start_token_id, work.pad_token_id
                obj.eos_token_id = None
        inputs = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        return State(model, inputs)

    def task(self, name, state, work):
        import torch

        m, x = state.model, state.inputs
        if name == "forward":

            def run():
                m.eval()
                with torch.no_grad():
                    return m(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=x["labels"]).loss

            return run
        if name in GEN_KWARGS:
            kwargs = dict(GEN_KWARGS[name], max_new_tokens=work.new_tokens, eos_token_id=None)

            def run():
                m.eval()
                torch.manual_seed(work.seed)  # sampling draws the same numbers on every repeat
                with torch.no_grad():
                    return m.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"], **kwargs)

            return run
        if name == "train_step":
            opt = state.extra.setdefault("opt", torch.optim.AdamW(m.parameters(), lr=1e-5))

            def run():
                m.train()
                opt.zero_grad(set_to_none=True)
                loss = m(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=x["labels"]).loss
                loss.backward()
                opt.step()
                return loss.detach()

            return run
        raise KeyError(f"unknown task {name!r}")

    def sync(self, device):
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    def num_params(self, model):
        return sum(p.numel() for p in model.parameters())  # tied weights counted once


# framework -> side -> Impl. "theirs" is Transformers 4.57's class with the same API.
REGISTRY: dict[str, dict[str, Impl]] = {
    "pt": {
        "ours": TorchImpl("ours", "encdec_pt", "EncoderDecoderModel"),
        "theirs": TorchImpl("theirs", "transformers", "EncoderDecoderModel"),
    },
    # "tf":   {"ours": TFImpl("ours", "encdec_tf", "TFEncoderDecoderModel"),
    #          "theirs": TFImpl("theirs", "transformers", "TFEncoderDecoderModel")},
    # "flax": {"ours": FlaxImpl("ours", "encdec_flax", "FlaxEncoderDecoderModel"),
    #          "theirs": FlaxImpl("theirs", "transformers", "FlaxEncoderDecoderModel")},
}


def out_shape(out: Any) -> list[int] | None:
    """Shape of a task's result (generated ids), whatever container it came in."""
    seq = getattr(out, "sequences", out)
    shape = getattr(seq, "shape", None)
    return [int(d) for d in shape] if shape is not None else None
