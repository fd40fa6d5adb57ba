"""Level 5: a tiny warm-started bert2gpt2 learns the reverse task and reads its input."""

from __future__ import annotations

import torch

from encdec_core import BertConfig, GPT2Config
from encdec_core.toy import BOS, EOS, PAD, reverse_task
from encdec_pt import BertModel, EncoderDecoderModel, GPT2LMHeadModel


def test_warm_started_model_learns_and_depends_on_input(tmp_path):
    torch.manual_seed(0)
    vocab = 24
    BertModel.from_config(
        BertConfig(
            vocab_size=vocab,
            hidden_size=36,
            num_hidden_layers=1,
            num_attention_heads=3,
            intermediate_size=37,
            max_position_embeddings=16,
        )
    ).save_pretrained(tmp_path / "enc")
    GPT2LMHeadModel.from_config(
        GPT2Config(
            vocab_size=vocab,
            n_embd=36,
            n_layer=1,
            n_head=3,
            n_inner=37,
            n_positions=16,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
    ).save_pretrained(tmp_path / "dec")
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "enc", tmp_path / "dec", encoder_hidden_dropout_prob=0.0, decoder_resid_pdrop=0.0
    )
    model.config.decoder_start_token_id, model.config.pad_token_id = BOS, PAD
    src, tgt = map(torch.from_numpy, reverse_task(2048, length=4, vocab_size=vocab, seed=1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(250):
        i = torch.randint(0, len(src), (32,))
        loss = model(input_ids=src[i], labels=tgt[i]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.25 * sum(losses[:10]) / 10

    model.eval()
    test_src, test_tgt = map(torch.from_numpy, reverse_task(64, length=4, vocab_size=vocab, seed=99))
    with torch.no_grad():
        pred = model(input_ids=test_src, labels=test_tgt).logits.argmax(-1)
        # the same decoder inputs with another source: predictions must follow the source
        other = model(input_ids=test_src.roll(1, dims=0), labels=test_tgt).logits.argmax(-1)
    acc = (pred == test_tgt).float().mean().item()
    assert acc > 0.9, f"teacher-forced accuracy {acc:.2f} on held-out examples"
    assert (other != pred).float().mean().item() > 0.5
