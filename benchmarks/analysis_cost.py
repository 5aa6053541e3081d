"""Cost of each analysis on a CIFAR-10-sized test set on CPU (issue #17): a torchvision resnet18 (random weights: the
cost does not depend on training) over CIFAR-10's 10,000 test images, each analysis timed alone on embeddings
already extracted and cached, with the defaults `embedlab analyze --analyses all` uses.

    OMP_NUM_THREADS=2 python benchmarks/analysis_cost.py --data-root data/cifar10 --out runs/analysis-cost

``--data-root``: CIFAR-10 as an ImageFolder (``train/`` and ``test/``; e.g. ``../shared/data/cifar10-jpeg.tar.gz``
unpacked). The first step extracts every split and OOD set the analyses read (timed separately, as "extraction");
then each analysis runs alone, reusing the cache. Results go to ``OUT/cost.json`` after every step, and a rerun
skips the steps already there, so an interrupted run continues. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROBUSTNESS_1000 = "robustness, max_examples=1000"
ANALYSES = ("accuracy", "knn", "align_uniform", "calibration", "clustering", "embedding_mmlb", "ood", "robustness")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, help="CIFAR-10 ImageFolder root (train/, test/)")
    ap.add_argument("--out", default="runs/analysis-cost", help="working folder (cache, results, cost.json)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()

    import torch
    import torchvision

    import embedlab
    from embedlab.io import atomic_write_json

    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "cost.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.setdefault("steps", {})
    record["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    weights = out / "r18.pth"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    spec = {"name": "resnet18", "kind": "torchvision", "arch": "resnet18", "weights": "r18.pth",
            "dataset": "imagefolder", "data_root": str(Path(a.data_root).resolve()),
            "preprocess": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}}
    (out / "r18.json").write_text(json.dumps(spec))
    common = dict(cache_dir=out / "cache", device="cpu", progress=True, force=True)

    def step(name: str, analyses: str, settings: dict | None = None) -> None:
        if name in record["steps"]:
            print(f"{name}: done before ({record['steps'][name]['seconds']:.1f} s)")
            return
        t0 = time.perf_counter()
        res = embedlab.evaluate(out / "r18.json", out=out / "results" / name, analyses=analyses, settings=settings,
                                **common)
        seconds = time.perf_counter() - t0
        record["steps"][name] = {"seconds": seconds, "analyses": analyses,
                                 "settings": {k: e.get("settings") for k, e in list(res.entries.items())[:3]},
                                 "n_test": res.dataset.get("num_examples")}
        atomic_write_json(record_path, record)
        print(f"{name}: {seconds:.1f} s")

    # extraction of every split and OOD set, with the cheapest analyses that need them
    step("extraction", "accuracy,knn,calibration,ood_logits")
    for name in ANALYSES:
        step(name, name)
    total = sum(record["steps"][n]["seconds"] for n in ANALYSES)
    record["total_without_extraction_s"] = total
    atomic_write_json(record_path, record)
    # the attacks' cost against their subset size: the previous default, 1,000 examples
    step(ROBUSTNESS_1000, "robustness", {"robustness": {"max_examples": 1000}})
    print("\n| step | seconds |\n|---|---|")
    for name in ("extraction", *ANALYSES):
        print(f"| {name} | {record['steps'][name]['seconds']:.1f} |")
    print(f"| **all analyses (without extraction)** | **{total:.1f}** |")
    print(f"| {ROBUSTNESS_1000} | {record['steps'][ROBUSTNESS_1000]['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
