"""encdec's TensorFlow/Keras 3 backend (``TFEncoderDecoderModel``): not built yet.

Importing it says so clearly instead of failing somewhere deeper.
"""

raise ImportError("encdec_tf (TFEncoderDecoderModel) is not implemented yet in this release; use encdec_pt")
