"""Import cost of embedlab's entry points (issue #15): median wall time of each import statement, every sample in a
fresh Python process.

Statements (each measured with ``time.perf_counter`` around ``exec`` inside its own subprocess, so interpreter start-up
is not counted), twice: *cold* (the statement alone, torch included when it imports torch) and *torch preloaded*
(``import torch`` first, untimed, then the statement: the cost embedlab adds on top of torch, far less noisy than a
difference of two cold medians):

- ``import torch``
- ``import embedlab``
- ``import embedlab.metrics.geometry`` and ``from embedlab.metrics.geometry import alignment``
- ``import embedlab.analyses``

Samples are taken round-robin (one of every statement per round), so background load on a shared machine hits all
of them alike. Each subprocess also reports how many ``embedlab`` modules it loaded and whether faiss, scikit-learn
or scipy got imported. Prints a Markdown table; ``--json PATH`` also writes the raw samples.

    python benchmarks/import_cost.py --rounds 9
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "import torch": "import torch",
    "import embedlab": "import embedlab",
    "import embedlab.metrics.geometry": "import embedlab.metrics.geometry",
    "from embedlab.metrics.geometry import alignment": "from embedlab.metrics.geometry import alignment",
    "import embedlab.analyses": "import embedlab.analyses",
}
HEAVY = ("faiss", "sklearn", "scipy")
MODES = ("cold", "preload")

PROBE = """
import json, sys, time
if sys.argv[2] == "preload":
    import torch
t0 = time.perf_counter()
exec(compile(sys.argv[1], "<statement>", "exec"), {})
dt = time.perf_counter() - t0
mods = sys.modules
print(json.dumps({"seconds": dt, "torch": "torch" in mods,
                  "embedlab_modules": sorted(m for m in mods if m == "embedlab" or m.startswith("embedlab.")),
                  "heavy": sorted(h for h in %r if h in mods)}))
""" % (HEAVY,)


def sample(statement: str, env: dict[str, str], mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, statement, mode], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="fresh processes per statement (at least 7)")
    ap.add_argument("--warmup", type=int, default=1, help="rounds run first and not kept (file cache)")
    ap.add_argument("--json", help="write the raw samples here")
    args = ap.parse_args(argv)
    if args.rounds < 7:
        ap.error("--rounds must be at least 7")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    samples: dict[str, dict[str, list[dict]]] = {mode: {name: [] for name in STATEMENTS} for mode in MODES}
    for r in range(args.warmup + args.rounds):
        for name, stmt in STATEMENTS.items():
            for mode in MODES:
                s = sample(stmt, env, mode)
                if r >= args.warmup:
                    samples[mode][name].append(s)
        print(f"round {r + 1}/{args.warmup + args.rounds}", file=sys.stderr, flush=True)

    import torch  # only for the versions line

    print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs, {args.rounds} fresh "
          f"processes per statement and mode (median; min – max), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| statement | cold: median (min – max) | imports torch | torch preloaded: median (min – max) | "
          "embedlab modules loaded | faiss / sklearn / scipy loaded |")
    print("|---|---|---|---|---|---|")

    def cell(ss: list[dict]) -> str:
        t = [1000 * s["seconds"] for s in ss]
        return f"{statistics.median(t):.0f} ms ({min(t):.0f} – {max(t):.0f})"

    for name in STATEMENTS:
        cold, pre = samples["cold"][name], samples["preload"][name]
        heavy = ", ".join(sorted({h for s in cold + pre for h in s["heavy"]})) or "none"
        n_mods = max(len(s["embedlab_modules"]) for s in cold)
        torch_too = "yes" if all(s["torch"] for s in cold) else "no"
        print(f"| `{name}` | {cell(cold)} | {torch_too} | {cell(pre)} | {n_mods} | {heavy} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"python": sys.version, "torch": torch.__version__, "rounds": args.rounds, "samples": samples},
                      fh, indent=2)


if __name__ == "__main__":
    main()
