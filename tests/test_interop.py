"""Interop with the installed Transformers (5.x in the test environment, 4.57 where that is installed): ours -> theirs.

Both directions and the tied checkpoints in detail: tests/test_transformers5.py.
"""

from __future__ import annotations

import pytest
import torch

from encdec_pt import EncoderDecoderModel
from tests.conftest import FIXTURES, PAIRS, expected
from tests.tolerances import assert_close

transformers = pytest.importorskip("transformers", reason="interop tests need Transformers installed")


@pytest.mark.parametrize("pair", PAIRS)
def test_our_checkpoint_loads_in_transformers(tmp_path, pair):
    ours = EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    e = expected(pair)
    batch = {k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        assert_close(theirs(**batch).logits, ours(**batch).logits, what=f"{pair}: Transformers on our save")
