"""Training throughput (images/s) of one model under the trainer's speed settings, in one run: fp32, fp32 +
channels_last, bf16 autocast, bf16 + channels_last, and optionally each with ``torch.compile``.

    python benchmarks/precision_throughput.py --device cuda --model preact-resnet18 --batch-size 128 --rounds 30
    python benchmarks/precision_throughput.py --device cpu --model cnn-gap --rounds 5     # runs anywhere

Each configuration gets its own freshly initialised model (same seed) and SGD optimizer; configurations are timed
round-robin (one step of each per round, after warm-up rounds) so that machine noise hits all of them alike. The
figure is the median step time over rounds, reported as images/s and as a ratio to fp32. The step is the trainer's
(``trainers.loop``): ERM loss under ``torch.autocast(dtype=bfloat16)`` when bf16 is on, inputs converted to
channels_last when it is on, forward + backward + SGD step, synchronised on CUDA.
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch
import torch.nn.functional as F
from common import dump, round_robin, sgd_step

from embedlab.models import create_model

CONFIGS = {"fp32": (False, False), "fp32+channels_last": (False, True), "bf16": (True, False),
           "bf16+channels_last": (True, True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="preact-resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=32, help="input height/width (3 channels)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds (compilation happens here)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time each configuration under torch.compile")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        torch.backends.cudnn.allow_tf32 = False
    x = torch.rand(a.batch_size, 3, a.size, a.size, device=device)
    y = torch.randint(0, a.classes, (a.batch_size,), device=device)
    runs = {}
    for name, (bf16, cl) in CONFIGS.items():
        for comp in (False, True) if a.compile else (False,):
            torch.manual_seed(0)
            model = create_model(a.model, a.classes, (3, a.size, a.size)).to(device).train()
            if cl:
                model = model.to(memory_format=torch.channels_last)
            fwd = torch.compile(model) if comp else model
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            xin = x.contiguous(memory_format=torch.channels_last) if cl else x
            runs[name + ("+compile" if comp else "")] = (fwd, opt, xin, bf16)

    def loss_fn(fwd, xin, bf16):
        def run() -> torch.Tensor:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                return F.cross_entropy(fwd(xin).float(), y)
        return run

    times = round_robin({n: sgd_step(opt, loss_fn(fwd, xin, bf16)) for n, (fwd, opt, xin, bf16) in runs.items()},
                        device, a.warmup, a.rounds)
    base = statistics.median(times["fp32"])
    rows = [{"config": n, "median_s": statistics.median(ts), "images_per_s": a.batch_size / statistics.median(ts),
             "speedup_vs_fp32": base / statistics.median(ts)} for n, ts in times.items()]
    env = {"model": a.model, "batch_size": a.batch_size, "input": [3, a.size, a.size], "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
           "threads": torch.get_num_threads(), "rounds": a.rounds, "torch": torch.__version__}
    print(f"\n{a.model}, b={a.batch_size}, {a.size}×{a.size}, {env['device_name'] or device}, median of {a.rounds} "
          f"rounds\n")
    print("| configuration | median step (s) | images/s | × fp32 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_s']:.4f} | {r['images_per_s']:.0f} | {r['speedup_vs_fp32']:.2f} |")
    dump(a.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
