"""encdec's TensorFlow backend on Keras 3: ``TFEncoderDecoderModel`` and the BERT, RoBERTa, GPT-2 models.

Keras 3 must run on TensorFlow here (the legacy ``tf-keras`` is not used). Importing this
package sets ``KERAS_BACKEND=tensorflow`` when it is unset; if Keras was already imported
with another backend, or the variable names another, it raises an ``ImportError`` saying so.

>>> from encdec_tf import TFEncoderDecoderModel, BertModel, GPT2LMHeadModel  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys


def _require_tensorflow_backend() -> None:
    """Make Keras 3 use TensorFlow, or explain why it cannot in this process."""
    wanted = os.environ.get("KERAS_BACKEND")
    if wanted not in (None, "tensorflow"):
        raise ImportError(
            f"encdec_tf needs Keras 3 on TensorFlow, but KERAS_BACKEND={wanted!r}; "
            "unset it or set KERAS_BACKEND=tensorflow before importing encdec_tf (or keras)"
        )
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # read by Keras at its first import
        import keras
    version = str(getattr(keras, "__version__", "0"))
    if int(version.split(".")[0]) < 3:
        raise ImportError(
            f"encdec_tf needs Keras 3 (the `keras` package >= 3), found keras {version}; "
            "install keras>=3 (the legacy tf-keras is not supported)"
        )
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            f"encdec_tf needs Keras 3 on TensorFlow, but Keras was already imported with the "
            f"{backend!r} backend; import encdec_tf before keras, or start Python with KERAS_BACKEND=tensorflow"
        )
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # also for subprocesses


_require_tensorflow_backend()

from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig  # noqa: E402
from encdec_tf import models  # noqa: E402
from encdec_tf.cache import DecoderCache  # noqa: E402
from encdec_tf.encoder_decoder import TFEncoderDecoderModel  # noqa: E402
from encdec_tf.modeling_utils import PreTrainedModel  # noqa: E402
from encdec_tf.models import *  # noqa: E402, F403  (the architectures, models.__all__)

__all__ = ["TFEncoderDecoderModel", "DecoderCache", "PreTrainedModel", *models.__all__]
__all__ += ["BertConfig", "RobertaConfig", "GPT2Config", "EncoderDecoderConfig"]
