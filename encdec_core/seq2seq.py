"""The encoder-decoder forward, written once for PyTorch and TF (Flax's runs inside its linen module).

:class:`Seq2SeqForward` holds the flow of HF's ``EncoderDecoderModel.forward``: route the
``decoder_``-prefixed keyword arguments, check shapes and labels, encode unless
``encoder_outputs`` are given, project to the decoder's width, derive the decoder inputs from
``labels`` (the loss rule of :mod:`encdec_core.semantics`), decode, and compute the loss. A
backend supplies tensor operations only:

* ``array_namespace``: the numpy-like module :mod:`encdec_core.semantics` shifts labels with;
* ``part_options(a)``: keyword arguments every part call takes besides HF's (TF's ``training``);
* ``static_shape(x)``: a tensor's shape as a tuple of ints, or None where unknown (tracing);
* ``_check_labels(labels)``: the dtype and value checks of the labels, where their values are known;
* ``_loss(logits, labels, num_items_in_batch)``: the cross-entropy over labels != -100;
* ``resolve_flags``: whether output switches left None come from the wrapper's config before the
  parts see them (Transformers' TF class) or from each part's own config (its PyTorch class).
"""

from __future__ import annotations

from typing import Any

from encdec_core import semantics
from encdec_core.driver import output_flags
from encdec_core.errors import InputError
from encdec_core.outputs import as_encoder_output, encoder_states, seq2seq_output
from encdec_core.validation import check_batch


class Seq2SeqForward:
    """The framework-free half of ``EncoderDecoderModel.forward`` / ``TFEncoderDecoderModel.call``."""

    array_namespace: Any = None
    resolve_flags = False

    def part_options(self, a) -> dict:
        return {}

    def skip_encoder(self, a) -> bool:
        """Whether to decode on a cache alone (TF: a :class:`DecoderCache` and no source given)."""
        return False

    def static_shape(self, x) -> tuple | None:
        return None if x is None else tuple(x.shape)

    def _check_labels(self, labels) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _check_labels")

    def _check_inputs(self, a) -> None:
        """Shapes, lengths and label values, with errors that name the argument (shared rules: encdec_core.validation)."""
        shape = self.static_shape
        check_batch(
            self.config.encoder,
            self.config.decoder,
            input_ids=shape(a.input_ids),
            attention_mask=shape(a.attention_mask),
            encoder_states=shape(encoder_states(a.encoder_outputs)),
            decoder_input_ids=shape(a.decoder_input_ids),
            # with a cache, the decoder mask also covers the cached positions
            decoder_attention_mask=shape(None if a.past_key_values is not None else a.decoder_attention_mask),
            labels=shape(a.labels),
        )
        if a.labels is not None:
            self._check_labels(a.labels)

    def _loss(self, logits, labels, num_items_in_batch):
        raise NotImplementedError(f"{type(self).__name__} must define _loss")

    def seq2seq_forward(self, a, kwargs: dict):
        """``a``: the call's arguments (:func:`encdec_core.calls.arguments` of "seq2seq"); ``kwargs``: the others."""
        name = type(self).__name__
        # Transformers' Trainer passes the label-token count of the whole accumulated batch: the loss is then
        # this micro-batch's sum over it, so gradient accumulation gives the full batch's update (as HF's losses)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        enc_kw, dec_kw = semantics.split_prefixed_kwargs(kwargs, "decoder_", default="encoder")
        attentions, hidden, return_dict = output_flags(
            self.config, a.output_attentions, a.output_hidden_states, a.return_dict
        )
        if not self.resolve_flags:  # each part reads the switches left None from its own config
            attentions, hidden = a.output_attentions, a.output_hidden_states
        flags = dict(
            output_attentions=attentions, output_hidden_states=hidden, return_dict=True, **self.part_options(a)
        )
        self._check_inputs(a)
        encoder_outputs = a.encoder_outputs
        if encoder_outputs is None and not self.skip_encoder(a):
            if a.input_ids is None and a.inputs_embeds is None:
                raise InputError(f"{name}: give input_ids, inputs_embeds or encoder_outputs")
            encoder_outputs = self.encoder(
                input_ids=a.input_ids, attention_mask=a.attention_mask, inputs_embeds=a.inputs_embeds, **flags, **enc_kw
            )
        encoder_outputs = as_encoder_output(encoder_outputs)
        states = None if encoder_outputs is None else encoder_outputs.last_hidden_state
        if states is not None and self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        decoder_input_ids, decoder_attention_mask = semantics.decoder_inputs_from_labels(
            a.labels,
            a.decoder_input_ids,
            a.decoder_attention_mask,
            self.config.pad_token_id,
            self.config.decoder_start_token_id,
            xp=self.array_namespace,
            has_embeds=a.decoder_inputs_embeds is not None,
        )
        if decoder_input_ids is None and a.decoder_inputs_embeds is None:
            raise InputError(f"{name}: give decoder_input_ids, decoder_inputs_embeds or labels")
        dec = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=states,
            encoder_attention_mask=a.attention_mask,
            inputs_embeds=a.decoder_inputs_embeds,
            past_key_values=a.past_key_values,
            use_cache=a.use_cache,
            **flags,
            **dec_kw,
        )
        loss = None
        if a.labels is not None:
            want, got = tuple(dec.logits.shape[:2]), tuple(a.labels.shape)
            if None not in want + got and want != got:
                raise InputError(f"labels have shape {got}, expected {want} (batch, decoder length)")
            loss = self._loss(dec.logits, a.labels, num_items_in_batch)
        out = seq2seq_output(loss, dec, encoder_outputs)
        return out if return_dict else out.to_tuple()


__all__ = ["Seq2SeqForward"]
