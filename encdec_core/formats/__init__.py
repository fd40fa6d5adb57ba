"""Checkpoint formats below the backends: every reader a backend's loader needs, and their writers.

Layering runs one way: this package (framework-free at import; h5py, msgpack and torch are
imported inside the functions that read ``tf_model.h5``, ``flax_model.msgpack`` and
``pytorch_model.bin``), then the three backends, then :mod:`conversion` (converter, parity
checker, CLI). Modules: ``dtypes`` (the one dtype table), ``jsonio``, ``atomic`` (atomic files
and folders), ``shards`` (names, shard plans, indexes), ``safetensors_io`` (the one
safetensors reader and writer), ``pt_bin``, ``tf_h5``, ``flax_msgpack`` (HF's legacy
formats), ``naming`` and ``mapping`` (names and layouts through the tables), ``sources``
(each format behind one interface) and ``canonical`` (:func:`open_source`, what loaders call).
"""
