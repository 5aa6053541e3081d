"""Training-step time of the toy-depth study's vectorised trainer (``BatchedMLP``) in fp32 and bf16 on this CPU,
and the GFLOP/s of its hidden-layer product in each dtype, in one run.

    python benchmarks/toy_depth_step.py                  # 10 datasets x 5 methods = 50 models, K = 3, 2 threads
    python benchmarks/toy_depth_step.py --threads 1 --compile

Why: ``embedlab study toy-depth --precision auto`` picks bf16 only where the CPU has native bfloat16 matrix units
(AMX or AVX512-BF16, :func:`embedlab.trainers.studies.toy_depth.cpu_has_native_bf16`). This benchmark shows the two sides of
that choice on the machine at hand. Steps are timed round-robin (one step of each configuration per round, after
warm-up rounds) so that machine noise hits all alike; figures are medians, in ms per model per step.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from common import dump, round_robin

from embedlab.trainers.studies.toy_depth import BatchedMLP, ToyTrainConfig, cpu_has_native_bf16, draw_schedule, init_params


def product_gflops(dtype: torch.dtype, models: int, batch: int, width: int, reps: int) -> float:
    """GFLOP/s of ``bmm((models, batch, width), (models, width, width))`` in ``dtype``, median of ``reps``."""
    a = torch.randn(models, batch, width).to(dtype)
    b = torch.randn(models, width, width).to(dtype)
    torch.bmm(a, b)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.bmm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * models * batch * width * width / statistics.median(ts) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=int, default=10, help="datasets trained together (x 5 methods = models)")
    ap.add_argument("--K", type=int, default=3, help="classes")
    ap.add_argument("--width", type=int, default=512, help="hidden width (seed 002: 512)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="fused Adam through torch.compile, as the study's default")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfgs = {p: ToyTrainConfig(hidden=(a.width,) * 3, precision=p) for p in ("fp32", "bf16")}
    gen = torch.Generator().manual_seed(0)
    inits = [init_params(cfgs["fp32"].sizes(a.K), gen) for _ in range(a.datasets)]
    sched = draw_schedule(1000, cfgs["fp32"], gen)
    x = torch.randn(a.datasets, cfgs["fp32"].batch_size, 2)
    y = torch.randint(0, a.K, (a.datasets, cfgs["fp32"].batch_size))
    lam = sched.lam[0, 0].expand(a.datasets, -1).contiguous()
    perm = sched.perm[0, 0].expand(a.datasets, -1).contiguous()
    models = {p: BatchedMLP(inits, cfg, compile=a.compile) for p, cfg in cfgs.items()}
    times = round_robin({p: (lambda m=m: m.step(x, y, lam, perm)) for p, m in models.items()},
                        torch.device("cpu"), a.warmup, a.rounds)
    n_models = models["fp32"].M
    base = statistics.median(times["fp32"])
    rows = [{"precision": p, "ms_per_model_step": 1e3 * statistics.median(ts) / n_models,
             "speedup_vs_fp32": base / statistics.median(ts),
             "hidden_product_gflops": product_gflops(torch.float32 if p == "fp32" else torch.bfloat16, n_models,
                                                     cfgs[p].batch_size, a.width, 5)}
            for p, ts in times.items()]
    env = {"models": n_models, "K": a.K, "width": a.width, "threads": a.threads, "rounds": a.rounds,
           "compile": a.compile, "native_bf16": cpu_has_native_bf16(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__}
    print(f"\n{n_models} models (width {a.width}, K={a.K}), {a.threads} threads, CPU {env['cpu_capability']}, "
          f"native bf16: {env['native_bf16']}, {'compiled' if a.compile else 'eager'} Adam, median of {a.rounds} "
          f"rounds\n")
    print("| precision | ms per model-step | × fp32 speed | hidden product GFLOP/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['ms_per_model_step']:.2f} | {r['speedup_vs_fp32']:.2f} | "
              f"{r['hidden_product_gflops']:.1f} |")
    dump(a.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
