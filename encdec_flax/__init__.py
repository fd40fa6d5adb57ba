"""encdec's Flax/JAX backend (``FlaxEncoderDecoderModel``): not built yet.

Importing it says so clearly instead of failing somewhere deeper.
"""

raise ImportError("encdec_flax (FlaxEncoderDecoderModel) is not implemented yet in this release; use encdec_pt")
