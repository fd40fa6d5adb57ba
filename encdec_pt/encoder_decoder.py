"""``EncoderDecoderModel``: any encoder + any causal decoder with cross-attention, in PyTorch.

>>> from encdec_core import BertConfig, GPT2Config, EncoderDecoderConfig
>>> from encdec_pt import EncoderDecoderModel
>>> enc = BertConfig(vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37)
>>> dec = GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3)
>>> model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
>>> type(model.decoder).__name__
'GPT2LMHeadModel'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encdec_core import calls, driver, semantics
from encdec_core.configs import EncoderDecoderConfig
from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfig
from encdec_core.registry import model_class
from encdec_core.seq2seq import Seq2SeqForward
from encdec_core.tables import needs_projection
from encdec_pt import models as _models  # noqa: F401  (registers the architectures)
from encdec_pt.generation import GenerationMixin
from encdec_pt.kernels import Linear
from encdec_pt.modeling_utils import PreTrainedModel


class EncoderDecoderModel(driver.EncoderDecoderDriver, Seq2SeqForward, GenerationMixin, PreTrainedModel):
    """A sequence-to-sequence model made of an encoder and a causal decoder.

    Build it from a config (random weights), from two models, or warm-start it from two
    pretrained checkpoints with :meth:`from_encoder_decoder_pretrained`; load a fine-tuned
    one with :meth:`from_pretrained`. ``forward`` takes HF's arguments and returns HF's fields.
    The framework-free half (argument routing, tables, the warm start) is
    :class:`encdec_core.driver.EncoderDecoderDriver`'s.
    """

    config_class = EncoderDecoderConfig
    role = "encoder-decoder"
    backend = "pt"
    array_namespace = torch
    init_on_build = False  # __init__ initialises the parts it builds, never the pretrained ones it is given

    def __init__(
        self,
        config: EncoderDecoderConfig | None = None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        config = driver.wrapper_config("EncoderDecoderModel", config, encoder, decoder)
        super().__init__(config)
        self.encoder = encoder if encoder is not None else model_class("pt", config.encoder, "encoder")(config.encoder)
        self.decoder = decoder if decoder is not None else model_class("pt", config.decoder, "decoder")(config.decoder)
        driver.check_decoder("EncoderDecoderModel", self.decoder)
        # the seq2seq loss never reaches the encoder's pooler: frozen, so DistributedDataParallel
        # needs no find_unused_parameters (its weights are still loaded and saved)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler.requires_grad_(False)
        # the sub-models' configs are the wrapper's, so an edit of one is seen by the other
        config.encoder, config.decoder = self.encoder.config, self.decoder.config
        config.validate()
        self.enc_to_dec_proj = (
            Linear(config.encoder.hidden_size, config.decoder.hidden_size) if needs_projection(config) else None
        )
        self.tie_weights()
        # parts built here from configs get HF's init, as Transformers' post_init gives them (from_pretrained
        # builds on the meta device and fills every weight from the checkpoint instead)
        built = [side for side, part in (("encoder.", encoder), ("decoder.", decoder)) if part is None]
        if built and not next(self.parameters()).is_meta:
            self.init_weights(
                [
                    n
                    for n, _ in self.named_parameters(remove_duplicate=False)
                    if n.startswith((*built, "enc_to_dec_proj."))
                ]
            )
        self.set_generation_config(GenerationConfig.from_model_config(config))

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return semantics.shift_tokens_right(
            labels, self.config.pad_token_id, self.config.decoder_start_token_id, xp=torch
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values=None,
        attention_mask=None,
        use_cache=None,
        encoder_outputs=None,
        decoder_attention_mask=None,
        **kwargs,
    ):
        """The ``forward`` arguments of one decoding step, as HF's (PEFT's ``SEQ_2_SEQ_LM`` wraps it).

        ``input_ids`` (N, T) are the decoder ids so far; with a cache only those not yet in it are fed.
        """
        past = _models._past_length(past_key_values)
        return {
            "decoder_input_ids": input_ids[:, past:] if past_key_values is not None else input_ids,
            "decoder_attention_mask": decoder_attention_mask,
            "attention_mask": attention_mask,
            "encoder_outputs": encoder_outputs,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
        }

    # ------------------------------------------------------------------ forward (the flow: encdec_core.seq2seq)
    @calls.signature("seq2seq", var_keyword=True)
    def forward(self, a, **kwargs):
        """Encode (unless ``encoder_outputs`` is given), decode, and with ``labels`` compute the loss.

        ``labels`` (B, T) with -100 on ignored positions give ``decoder_input_ids`` by a shift
        right (``decoder_start_token_id`` first, -100 -> ``pad_token_id``) when none are given,
        and the loss: mean cross-entropy over the tokens whose label is not -100 (with
        ``num_items_in_batch``, as Transformers' Trainer passes it: their sum divided by it).
        Keyword arguments prefixed ``decoder_`` go to the decoder, the others to the encoder.
        As in Transformers, ``return_dict=None`` means ``config.return_dict``, and the parts read
        ``output_attentions`` / ``output_hidden_states`` / ``use_cache`` left None from their own configs.
        """
        return self.seq2seq_forward(a, kwargs)

    def _loss(self, logits, labels, num_items_in_batch):
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=semantics.IGNORE_INDEX,
            reduction="mean" if num_items_in_batch is None else "sum",
        )
        return loss if num_items_in_batch is None else loss / num_items_in_batch

    def _check_labels(self, labels) -> None:
        if labels.dtype.is_floating_point:
            raise InputError(f"labels must hold integer token ids, got dtype {labels.dtype}")
        semantics.check_label_array(labels.detach().cpu().numpy(), self.config.decoder.vocab_size)

    # ------------------------------------------------------------------ construction (the rest: driver)
    @classmethod
    def _assemble(cls, config: EncoderDecoderConfig, parts: dict, options: dict) -> EncoderDecoderModel:
        model = cls(config=config, encoder=parts["encoder"], decoder=parts["decoder"])
        if model.enc_to_dec_proj is not None:  # new: HF's init
            model.enc_to_dec_proj.reset_parameters()
            with torch.no_grad():
                model.enc_to_dec_proj.weight.normal_(0.0, config.decoder.initializer_range)
                model.enc_to_dec_proj.bias.zero_()
        # as in Transformers, the parts stay in the eval mode from_pretrained left them in (dropout off):
        # call model.train() before fine-tuning
        return model


__all__ = ["EncoderDecoderModel"]
