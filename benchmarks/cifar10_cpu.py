"""CIFAR-10 on CPU: test accuracy and seconds per epoch for the five core methods with a CPU-sized CNN that pools a
spatial map (cnn-gap, so Dense MultiMix applies), same epochs and seeds for every method, in one run.

    python benchmarks/cifar10_cpu.py --epochs 2 --seeds 0,1,2 --out /tmp/c10-bench
    python benchmarks/cifar10_cpu.py --device cuda --model preact-resnet18 --workers 8 --epochs 30   # GPU schedule

Data: the JPEG copy of CIFAR-10 in ../shared/data (unpacked once into --data-dir); skipped with a message when it is
absent. Training: cnn-gap (width 32), SGD lr 0.05, momentum 0.9, wd 5e-4, cosine, batch 128, standard crop+flip
augmentation, 10 % of train carved for validation; test accuracy of the last epoch on the 10,000 test images.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tarfile
from pathlib import Path

import torch

from embedlab.config import TrainConfig
from embedlab.trainers import train
from embedlab.trainers.studies.confmix import test_accuracy

METHODS = ("erm", "mixup", "manifold_mixup", "multimix", "dense_multimix")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def unpack(data_dir: Path) -> Path:
    if not (data_dir / "train").is_dir():
        if not SHARED.exists():
            sys.exit(f"skip: {SHARED} is absent (this benchmark needs the shared CIFAR-10 JPEG copy)")
        data_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED) as tar:
            tar.extractall(data_dir, filter="data")
    roots = [p.parent for p in data_dir.rglob("train") if (p.parent / "test").is_dir()]
    return roots[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--data-dir", default="/tmp/cifar10-jpeg")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--subset", type=int, default=None, help="train on a seeded subset of this many images")
    ap.add_argument("--out", default="/tmp/c10-bench")
    ap.add_argument("--model", default="cnn-gap", help="any registered model with a spatial map (dense_multimix)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 + channels_last there, as the trainer does)")
    a = ap.parse_args()
    root = unpack(Path(a.data_dir))
    base = TrainConfig(dataset="imagefolder", data_root=str(root), model=a.model, epochs=a.epochs, batch_size=128,
                       lr=0.05, weight_decay=5e-4, schedule="cosine", num_workers=a.workers, device=a.device,
                       dataset_options={"train_subset": a.subset} if a.subset else {})
    rows = {}
    for method in a.methods.split(","):
        accs, secs = [], []
        for seed in (int(s) for s in a.seeds.split(",")):
            run = Path(a.out) / f"{method}-seed{seed}"
            ckpt = train(dataclasses.replace(base, method=method, seed=seed), run, progress=False, resume=True)
            accs.append(test_accuracy(ckpt, a.device))
            hist = json.loads((run / "meta.json").read_text())["history"]
            secs += [h["seconds"] for h in hist]
            print(f"{method} seed {seed}: test acc {accs[-1]:.4f}, s/epoch {[round(h['seconds']) for h in hist]}",
                  flush=True)
        rows[method] = {"acc_mean": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0,
                        "sec_per_epoch_median": statistics.median(secs), "accs": accs}
    print(f"\nCIFAR-10 (JPEG copy), {a.model} on {a.device}, {a.epochs} epochs, train subset {a.subset or 'all'}, "
          f"seeds {a.seeds}, {torch.get_num_threads()} threads\n")
    print("| method | test accuracy (mean ± std) | s / epoch (median) |\n|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['acc_mean']:.4f} ± {r['acc_std']:.4f} | {r['sec_per_epoch_median']:.1f} |")
    Path(a.out, "summary.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
