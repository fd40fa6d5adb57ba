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

import dataclasses
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encdec_core.configs import EncoderDecoderConfig, PretrainedConfig
from encdec_core.errors import ConfigError, InputError
from encdec_core.generation import GenerationConfig
from encdec_core.hub import resolve_checkpoint
from encdec_core.outputs import BaseModelOutput, Seq2SeqLMOutput
from encdec_core.registry import model_class
from encdec_core.report import LoadingReport
from encdec_core.semantics import (
    IGNORE_INDEX,
    default_decoder_attention_mask,
    shift_tokens_right,
    split_prefixed_kwargs,
)
from encdec_core.tables import Param, Tie, encoder_decoder_table, encoder_decoder_ties, needs_projection
from encdec_core.validation import check_batch, check_label_values
from encdec_pt import models as _models  # noqa: F401  (registers the architectures)
from encdec_pt.generation import GenerationMixin
from encdec_pt.modeling_utils import PreTrainedModel

logger = logging.getLogger("encdec")
WRAPPER_TOKENS = ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id")


class EncoderDecoderModel(GenerationMixin, PreTrainedModel):
    """A sequence-to-sequence model made of an encoder and a causal decoder.

    Build it from a config (random weights), from two models, or warm-start it from two
    pretrained checkpoints with :meth:`from_encoder_decoder_pretrained`; load a fine-tuned
    one with :meth:`from_pretrained`. ``forward`` takes HF's arguments and returns HF's fields.
    """

    config_class = EncoderDecoderConfig
    role = "encoder-decoder"

    def __init__(self, config: EncoderDecoderConfig | None = None, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None):
        if config is None:
            if encoder is None or decoder is None:
                raise ConfigError("EncoderDecoderModel needs either `config` or both `encoder` and `decoder`")
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ConfigError(f"EncoderDecoderModel: `config` expected an EncoderDecoderConfig, got {type(config).__name__}")
        super().__init__(config)
        self.encoder = encoder if encoder is not None else model_class("pt", config.encoder, "encoder")(config.encoder)
        self.decoder = decoder if decoder is not None else model_class("pt", config.decoder, "decoder")(config.decoder)
        if not (self.decoder.config.is_decoder and self.decoder.config.add_cross_attention):
            raise ConfigError(
                f"EncoderDecoderModel: the decoder ({type(self.decoder).__name__}) must be built with "
                "is_decoder=True and add_cross_attention=True"
            )
        # the seq2seq loss never reaches the encoder's pooler: frozen, so DistributedDataParallel
        # needs no find_unused_parameters (its weights are still loaded and saved)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler.requires_grad_(False)
        # the sub-models' configs are the wrapper's, so an edit of one is seen by the other
        config.encoder, config.decoder = self.encoder.config, self.decoder.config
        config.validate()
        self.enc_to_dec_proj = (
            nn.Linear(config.encoder.hidden_size, config.decoder.hidden_size) if needs_projection(config) else None
        )
        self.tie_weights()
        # parts built here from configs get HF's init, as Transformers' post_init gives them (from_pretrained
        # builds on the meta device and fills every weight from the checkpoint instead)
        built = [side for side, part in (("encoder.", encoder), ("decoder.", decoder)) if part is None]
        if built and not next(self.parameters()).is_meta:
            self.init_weights([n for n, _ in self.named_parameters(remove_duplicate=False)
                               if n.startswith((*built, "enc_to_dec_proj."))])
        self.set_generation_config(GenerationConfig.from_model_config(config))

    # ------------------------------------------------------------------ tables, accessors
    def weight_table(self) -> list[Param]:
        return encoder_decoder_table(self.config)

    def weight_ties(self) -> list[Tie]:
        return encoder_decoder_ties(self.config)

    def init_std(self) -> float:
        return self.config.decoder.initializer_range  # new weights (cross-attention, projection) feed the decoder

    def get_encoder(self) -> nn.Module:
        return self.encoder

    def get_decoder(self) -> nn.Module:
        return self.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder.get_output_embeddings()

    def config_to_save(self) -> dict:
        cfg = super().config_to_save()
        cfg["encoder"]["architectures"] = [type(self.encoder).__name__]
        cfg["decoder"]["architectures"] = [type(self.decoder).__name__]
        return cfg

    def generation_config_to_save(self) -> dict | None:
        return self._generation_config(None, {}).to_dict()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id, xp=torch)

    # ------------------------------------------------------------------ forward
    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
        encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, labels=None,
        use_cache=None, output_attentions=False, output_hidden_states=False, return_dict=True, **kwargs,
    ):
        """Encode (unless ``encoder_outputs`` is given), decode, and with ``labels`` compute the loss.

        ``labels`` (B, T) with -100 on ignored positions give ``decoder_input_ids`` by a shift
        right (``decoder_start_token_id`` first, -100 -> ``pad_token_id``) when none are given,
        and the loss: mean cross-entropy over the tokens whose label is not -100.
        Keyword arguments prefixed ``decoder_`` go to the decoder, the others to the encoder.
        """
        enc_kw, dec_kw = split_prefixed_kwargs(kwargs, "decoder_", default="encoder")
        # with a cache, the decoder mask also covers the cached positions
        self._check_inputs(input_ids, attention_mask, encoder_outputs, decoder_input_ids,
                           None if past_key_values is not None else decoder_attention_mask, labels)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, **enc_kw,
            )
        elif isinstance(encoder_outputs, (tuple, list)):  # HF order: (last_hidden_state, hidden_states, attentions)
            t = list(encoder_outputs) + [None, None]
            encoder_outputs = BaseModelOutput(last_hidden_state=t[0], hidden_states=t[1], attentions=t[2])
        enc_states = encoder_outputs.last_hidden_state
        if self.enc_to_dec_proj is not None:
            enc_states = self.enc_to_dec_proj(enc_states)

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = default_decoder_attention_mask(decoder_input_ids, self.config.pad_token_id)
        dec = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, encoder_hidden_states=enc_states,
            encoder_attention_mask=attention_mask, inputs_embeds=decoder_inputs_embeds,
            past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, **dec_kw,
        )
        loss = None
        if labels is not None:
            logits = dec.logits
            if labels.shape != logits.shape[:2]:
                raise InputError(f"labels have shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])} (batch, decoder length)")
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        out = Seq2SeqLMOutput(
            loss=loss,
            logits=dec.logits,
            past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()

    def _check_inputs(self, input_ids, attention_mask, encoder_outputs, decoder_input_ids, decoder_attention_mask,
                      labels) -> None:
        """Shapes, lengths and label values, with errors that name the argument (shared rules: encdec_core.validation)."""
        def shape(t):
            return None if t is None else tuple(t.shape)

        enc = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else (
            encoder_outputs.last_hidden_state if encoder_outputs is not None else None)
        check_batch(self.config.encoder, self.config.decoder, input_ids=shape(input_ids),
                    attention_mask=shape(attention_mask), encoder_states=shape(enc),
                    decoder_input_ids=shape(decoder_input_ids), decoder_attention_mask=shape(decoder_attention_mask),
                    labels=shape(labels))
        if labels is not None:
            if labels.dtype.is_floating_point:
                raise InputError(f"labels must hold integer token ids, got dtype {labels.dtype}")
            kept = labels[labels != IGNORE_INDEX]
            if kept.numel():
                check_label_values(int(kept.min()), int(kept.max()), self.config.decoder.vocab_size)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder_decoder_pretrained(
        cls, encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        decoder_pretrained_model_name_or_path: str | os.PathLike | None = None, *model_args, **kwargs: Any,
    ) -> EncoderDecoderModel:
        """Warm-start: load a pretrained encoder and a pretrained decoder, add cross-attention.

        ``encoder_*`` / ``decoder_*`` keyword arguments go to the two loads (config fields such
        as ``decoder_add_cross_attention`` or hub options such as ``encoder_revision``);
        ``encoder_model=`` / ``decoder_model=`` pass ready models; arguments without a prefix
        are fields of the :class:`EncoderDecoderConfig` (``tie_encoder_decoder=True``,
        ``decoder_start_token_id=``). The decoder is made causal with cross-attention; its
        cross-attention weights (and ``enc_to_dec_proj`` when widths differ) are new and
        listed as expected in ``model.loading_report``.
        """
        # the wrapper's own special tokens: taken first, so "decoder_start_token_id" is not
        # mistaken for a decoder config field "start_token_id"
        top = {k: kwargs.pop(k) for k in WRAPPER_TOKENS if k in kwargs}
        # as in HF, arguments without a prefix are fields of the EncoderDecoderConfig (tie_encoder_decoder=True)
        top.update({k: kwargs.pop(k) for k in list(kwargs) if not k.startswith(("encoder_", "decoder_"))})
        if unknown := sorted(set(top) - {f.name for f in dataclasses.fields(EncoderDecoderConfig)}):
            raise InputError(f"from_encoder_decoder_pretrained: unknown argument(s) {unknown}; prefix encoder_/decoder_ "
                             "to pass them to one part, or use fields of EncoderDecoderConfig")
        enc_kw, dec_kw = split_prefixed_kwargs(kwargs, "decoder_", "encoder_")
        reports = []
        encoder = enc_kw.pop("model", None)
        if encoder is None:
            if encoder_pretrained_model_name_or_path is None:
                raise InputError("from_encoder_decoder_pretrained: give an encoder path or repo id, or `encoder_model=`")
            enc_cls = _class_for(encoder_pretrained_model_name_or_path, "encoder", enc_kw)
            encoder, rep = enc_cls.from_pretrained(encoder_pretrained_model_name_or_path, output_loading_info=True,
                                                 log_report=False, **enc_kw)
            reports.append(rep.prefixed("encoder."))
        decoder = dec_kw.pop("model", None)
        if decoder is None:
            if decoder_pretrained_model_name_or_path is None:
                raise InputError("from_encoder_decoder_pretrained: give a decoder path or repo id, or `decoder_model=`")
            dec_kw.setdefault("is_decoder", True)
            dec_kw.setdefault("add_cross_attention", True)
            dec_cls = _class_for(decoder_pretrained_model_name_or_path, "decoder", dec_kw)
            decoder, rep = dec_cls.from_pretrained(decoder_pretrained_model_name_or_path, output_loading_info=True,
                                                 log_report=False, **dec_kw)
            reports.append(rep.prefixed("decoder."))
        config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
        for key, value in top.items():  # unset, as in HF, unless given here
            setattr(config, key, value)
        model = cls(config=config, encoder=encoder, decoder=decoder)
        new = []
        if model.enc_to_dec_proj is not None:
            model.enc_to_dec_proj.reset_parameters()
            with torch.no_grad():
                model.enc_to_dec_proj.weight.normal_(0.0, config.decoder.initializer_range)
                model.enc_to_dec_proj.bias.zero_()
            new = ["enc_to_dec_proj.weight", "enc_to_dec_proj.bias"]
        model.loading_report = LoadingReport.merge(reports, extra_new=new)
        model.loading_report.log(logger)
        model.train()  # HF returns the warm-started model ready for fine-tuning
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *model_args, config: EncoderDecoderConfig | None = None,
                        torch_dtype: Any = None, strict: bool = False, output_loading_info: bool = False, **kwargs):
        """Load a fine-tuned encoder-decoder checkpoint (a local folder or a Hub repo id)."""
        loaded = super().from_pretrained(name_or_path, *model_args, config=config, torch_dtype=torch_dtype,
                                         strict=strict, output_loading_info=True, **kwargs)
        model, report = loaded
        gen_file = model.checkpoint_folder / "generation_config.json"
        if gen_file.exists():
            model.set_generation_config(GenerationConfig.from_json_file(gen_file))
        return loaded if output_loading_info else model


def _class_for(path, role: str, kw: dict) -> type:
    """The backend class for the checkpoint at ``path`` in ``role`` (HF's Auto* classes)."""
    from encdec_core.configs import load_config
    from encdec_pt.modeling_utils import HUB_KWARGS

    hub = {k: kw[k] for k in HUB_KWARGS if k in kw}
    config: PretrainedConfig = kw.get("config") or load_config(resolve_checkpoint(path, **hub))
    return model_class("pt", config, role)



__all__ = ["EncoderDecoderModel"]
