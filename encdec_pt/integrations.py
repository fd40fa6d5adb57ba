"""Optional glue for Transformers' ``Trainer`` / ``Seq2SeqTrainer`` (imports ``transformers`` only when used).

The stock ``transformers.Seq2SeqTrainer`` trains, accumulates gradients, evaluates and
predicts with ``predict_with_generate`` and resumes with an encdec ``EncoderDecoderModel``
as it is. One thing it cannot do for any model that is not a ``transformers.PreTrainedModel``:
write ``config.json``; its checkpoints then hold the weights only (``model.safetensors``,
canonical names) and load with ``EncoderDecoderModel.from_pretrained(folder, config=...)``.
The two classes here are the stock ones with that one method replaced: checkpoints and
``save_model`` folders are complete canonical checkpoints (``config.json``,
``generation_config.json``, ``model.safetensors``, written atomically by
``save_pretrained``), loadable by encdec's ``from_pretrained`` and by Transformers'
``EncoderDecoderModel.from_pretrained`` with no argument. Only the import changes::

    from encdec_pt.integrations import Seq2SeqTrainer   # was: from transformers import Seq2SeqTrainer

Importing this module is free: ``transformers`` is imported when a class is first taken from it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from encdec_pt.modeling_utils import PreTrainedModel

_TRAINERS = ("Trainer", "Seq2SeqTrainer")


def _save_canonical(trainer: Any, model: PreTrainedModel, output_dir: str | None, state_dict: dict | None) -> None:
    """What ``Trainer._save`` writes, with the model saved by its own ``save_pretrained``."""
    import torch
    from transformers.trainer import TRAINING_ARGS_NAME

    output_dir = output_dir if output_dir is not None else trainer.args.output_dir
    if not trainer.args.should_save:
        return
    model.save_pretrained(output_dir, state_dict=state_dict)
    tokenizer = trainer.processing_class or getattr(trainer.data_collator, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


@functools.cache
def _trainer_class(name: str) -> type:
    import transformers

    base = getattr(transformers, name)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, PreTrainedModel):  # not an encdec model (e.g. a PEFT wrapper): the stock save
            return base._save(self, output_dir, state_dict)
        return _save_canonical(self, model, output_dir, state_dict)

    doc = (
        f"Transformers' ``{name}``, saving encdec models as complete canonical checkpoints (see the module docstring)."
    )
    return type(name, (base,), {"_save": _save, "__doc__": doc, "__module__": __name__})


def __getattr__(name: str) -> Any:
    if name in _TRAINERS:
        return _trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_TRAINERS)
