"""Extraction throughput relative to the bare forward pass of the same model, in one run.

    python benchmarks/extraction_speed.py --model cnn-gap --n 20000 --rounds 3
    python benchmarks/extraction_speed.py --model preact-resnet18 --n 4000 --rounds 3

"bare": ``for x, y in loader: model(x)`` under ``no_grad`` in eval mode (nothing kept). "extract": embedlab's
``extract`` streaming embeddings, logits and labels into memory-mapped ``.npy`` files, as the cache does. Same
DataLoader settings, same batches; the rounds alternate between the two, and the medians are compared.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from embedlab.data import TensorData, collate_batched
from embedlab.models import create_model
from embedlab.store import extract


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn-gap")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model(a.model, 10, (3, a.size, a.size)).eval()
    ds = TensorData(torch.rand(a.n, 3, a.size, a.size), torch.randint(0, 10, (a.n,)))
    loader = DataLoader(ds, batch_size=a.batch_size, shuffle=False, collate_fn=collate_batched)

    @torch.no_grad()
    def bare() -> float:
        t0 = time.perf_counter()
        for x, _ in loader:
            model(x)
        return time.perf_counter() - t0

    def streamed() -> float:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            extract(model, ds, d, batch_size=a.batch_size)
            return time.perf_counter() - t0

    bare()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "extract": []}
    for _ in range(a.rounds):
        times["bare"].append(bare())
        times["extract"].append(streamed())
    b, e = statistics.median(times["bare"]), statistics.median(times["extract"])
    print(f"\n{a.model}, {a.n} × 3×{a.size}×{a.size}, batch {a.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {a.rounds}\n")
    print("| path | median time (s) | images/s | relative throughput |\n|---|---|---|---|")
    print(f"| bare forward | {b:.2f} | {a.n / b:.0f} | 1.00 |")
    print(f"| embedlab extract (streamed to .npy) | {e:.2f} | {a.n / e:.0f} | {b / e:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
