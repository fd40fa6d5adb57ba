"""Side-by-side benchmarks of encdec against Transformers 4.57: ``python -m benchmarks.run``.

See ``benchmarks/README.md``.
"""
