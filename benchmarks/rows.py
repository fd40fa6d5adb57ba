"""One decode step's linears at a few rows: ``F.linear``, weight-first and prepacked oneDNN, per row count.

The weights are a base BERT decoder's (12 layers of six 768 x 768 matrices and the two feed-forward
matrices, plus the 30522 x 768 LM head: 490 MB in fp32), each multiplied once per pass, so that no
weight stays in the cache between its uses, as in a decode step. Printed per row count: ms per
pass for ``F.linear``, for the weight-first product ``addmm(b[:, None], W, x.T).T`` that
``encdec_pt.kernels`` runs for ``FEW_ROWS`` rows, and for the prepacked oneDNN kernel (packing
not counted), with the GB/s each reads the weights at, and the largest difference of the three
outputs from ``F.linear``'s relative to its largest value.

``.venv/bin/python -m benchmarks.rows --threads 1`` (and ``--threads 2``)
"""

from __future__ import annotations

import argparse
import time


def decoder_shapes(layers: int = 12, d: int = 768, inner: int = 3072, vocab: int = 30522) -> list[tuple[int, int]]:
    """(out, in) of every matrix a base BERT decoder step multiplies: q, k, v, out, cross q, cross out, FFN, head."""
    return [s for _ in range(layers) for s in [(d, d)] * 6 + [(inner, d), (d, inner)]] + [(vocab, d)]


def main(argv=None) -> list[dict]:
    import torch
    import torch.nn.functional as F

    p = argparse.ArgumentParser(prog="python -m benchmarks.rows", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--rows", default="1,2,3,4,8,16", help="comma-separated row counts")
    p.add_argument("--repeat", type=int, default=4, help="timed passes per cell (mean reported)")
    p.add_argument("--layers", type=int, default=12, help="decoder layers (2 for a smoke run)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen) for s in decoder_shapes(args.layers)]
    biases = [torch.randn(w.shape[0], generator=gen) for w in weights]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 4) for w in weights]
    gigabytes = sum(w.numel() for w in weights) * 4 / 1e9
    kernels = {
        "F.linear": lambda x, w, b, p: F.linear(x, w, b),
        "weight-first": lambda x, w, b, p: torch.addmm(b[:, None], w, x.t()).t(),
        "prepacked": lambda x, w, b, p: torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], ""),
    }
    out = []
    print(f"threads {torch.get_num_threads()}, {gigabytes * 1e3:.0f} MB of weights a pass")
    for rows in (int(r) for r in args.rows.split(",")):
        xs = {n: torch.randn(rows, n, generator=gen) for n in {w.shape[1] for w in weights}}
        row = {"rows": rows}
        with torch.no_grad():  # the three compute one product: the largest difference from F.linear's, on its scale
            ref = [F.linear(xs[w.shape[1]], w, b) for w, b in zip(weights, biases)]
            row["max_diff"] = max(
                float((f(xs[w.shape[1]], w, b, pk) - r).abs().max() / r.abs().max())
                for f in kernels.values()
                for w, b, pk, r in zip(weights, biases, packed, ref)
            )
        for name, f in kernels.items():
            with torch.no_grad():
                for w, b, pk in zip(weights, biases, packed):  # warm-up pass
                    f(xs[w.shape[1]], w, b, pk)
                start = time.perf_counter()
                for _ in range(args.repeat):
                    for w, b, pk in zip(weights, biases, packed):
                        f(xs[w.shape[1]], w, b, pk)
                row[name] = (time.perf_counter() - start) / args.repeat * 1e3
        out.append(row)
        print(
            f"rows {rows:3d}: "
            + "  ".join(f"{n} {row[n]:6.1f} ms ({gigabytes / row[n] * 1e3:4.1f} GB/s)" for n in kernels)
            + f"  max rel diff {row['max_diff']:.1e}"
        )
    return out


if __name__ == "__main__":
    main()
