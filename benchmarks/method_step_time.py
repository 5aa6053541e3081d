"""Time one training step (forward, backward, SGD step) per mixing method relative to ERM, in one run.

Methods are timed round-robin (one step of each method per round, after warm-up rounds) so that machine noise
hits all of them alike; the figure is the median over rounds and the ratio to ERM's median.

    python benchmarks/method_step_time.py --model preact-resnet18 --batch-size 128 --rounds 7
    python benchmarks/method_step_time.py --model cnn-gap --batch-size 128 --rounds 15
    python benchmarks/method_step_time.py --device cuda --bf16 --model preact-resnet18 --rounds 50

MultiMix-family methods are timed with p = 1 (every step uses the method, not its input-mixup fallback) and
ConfMix without warm-up, so each row measures the method itself.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys

import torch
from common import dump, round_robin, sgd_step

from embedlab.methods import METHODS, create_method, method_metadata
from embedlab.models import create_model

ALWAYS_ON = {"multimix": {"p": 1.0}, "dense_multimix": {"p": 1.0}, "confmix": {"warmup": 0}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="preact-resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=32, help="input height/width (3 channels)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", default="all", help="comma-separated, or all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, as the trainer does on CUDA")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    names = METHODS.names() if a.methods == "all" else a.methods.split(",")
    names = ["erm"] + [n for n in names if n != "erm"]
    torch.manual_seed(0)
    model = create_model(a.model, a.classes, (3, a.size, a.size)).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(a.batch_size, 3, a.size, a.size, device=device)
    y = torch.randint(0, a.classes, (a.batch_size,), device=device)
    methods = {}
    for n in names:
        m = create_method(n, ALWAYS_ON.get(n, {}))
        try:
            m.check_model(model)
        except Exception as e:  # e.g. a method needing a spatial map on a model without one
            print(f"skip {n}: {e}", file=sys.stderr)
            continue
        m.on_epoch_start(1, 1)
        methods[n] = m

    def loss_fn(m):
        def run() -> torch.Tensor:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.bf16):
                return m.loss(model, x, y, gen)
        return run

    times = round_robin({n: sgd_step(opt, loss_fn(m)) for n, m in methods.items()}, device, a.warmup, a.rounds)
    base = statistics.median(times["erm"])
    rows = []
    for n, ts in times.items():
        med = statistics.median(ts)
        rows.append({"method": n, "median_s": med, "ratio_to_erm": med / base, "space": method_metadata(n)["space"],
                     "options": {k: v for k, v in ALWAYS_ON.get(n, {}).items()}})
    env = {"model": a.model, "batch_size": a.batch_size, "input": [3, a.size, a.size], "device": str(device),
           "bf16": a.bf16,
           "threads": torch.get_num_threads(), "rounds": a.rounds, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine()}
    print(f"\n{a.model}, b={a.batch_size}, {a.size}×{a.size}, {device}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast, ' if a.bf16 else ''}median of {a.rounds} rounds\n")
    print("| method | space | median step (s) | × ERM |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['space']} | {r['median_s']:.4f} | {r['ratio_to_erm']:.3f} |")
    dump(a.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
