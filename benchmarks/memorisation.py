"""How much of the training split's label noise a run has memorised: the pilot check of a label-noise benchmark.

For each checkpoint (a run folder or ``.safetensors``), the model is evaluated on its own training split **without
augmentation**, with the labels it was trained on (noisy) and with the clean ones, and separately on the flipped
examples: ``memorised`` = fraction of flipped examples predicted as their *noisy* label, ``corrected`` = fraction
predicted as their clean label. Together with the run's validation-accuracy curve (``metrics.jsonl``: best epoch
and last-epoch drop) this says whether ERM overfits the noise in the regime, which is what a label-noise benchmark
needs to show mixing methods' effect.

    python benchmarks/memorisation.py RUN [RUN ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedlab.checkpoint import load_model
from embedlab.data import LabelNoise, collate_batched, create_dataset


@torch.no_grad()
def memorisation(run: str | Path, batch_size: int = 500) -> dict:
    run = Path(run)
    ckpt = run / "model.safetensors" if run.is_dir() else run
    model, meta = load_model(ckpt, "cpu")
    cfg = meta["config"]
    data = create_dataset(cfg["dataset"], cfg.get("data_root"), False, **dict(cfg.get("dataset_options") or {}))
    if not isinstance(data, LabelNoise):
        raise SystemExit(f"{run}: trained without label_noise; nothing to measure")
    clean, noisy = data.train_labels()
    ds = data.split("train", augment=False)
    pred = []
    for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_batched):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.get("amp") == "bf16"):
            pred.append(model(x).float().argmax(1))
    p = torch.cat(pred).numpy()
    flipped = clean != noisy
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if run.is_dir() else []
    val = [h.get("val_accuracy") for h in history]
    best = int(np.nanargmax(np.array(val, dtype=float))) if val else None
    return {
        "run": str(run), "epochs": len(history), "n_train": int(len(clean)), "n_flipped": int(flipped.sum()),
        "train_acc_noisy_labels": float((p == noisy).mean()),
        "train_acc_clean_labels": float((p == clean).mean()),
        "memorised": float((p[flipped] == noisy[flipped]).mean()),
        "corrected": float((p[flipped] == clean[flipped]).mean()),
        "clean_examples_fit": float((p[~flipped] == clean[~flipped]).mean()),
        "val_accuracy_best": None if best is None else val[best], "best_epoch": None if best is None else best + 1,
        "val_accuracy_last": val[-1] if val else None,
        "train_loss_last": history[-1]["train_loss"] if history else None,
        "val_accuracy_per_epoch": val,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", help="write the results to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = [memorisation(r) for r in a.runs]
    for r in out:
        print(f"{r['run']}: {r['epochs']} epochs; train accuracy on its noisy labels {r['train_acc_noisy_labels']:.3f} "
              f"(flipped examples memorised {r['memorised']:.3f}, corrected {r['corrected']:.3f}; clean examples fit "
              f"{r['clean_examples_fit']:.3f}); val accuracy best {r['val_accuracy_best']:.3f} at epoch "
              f"{r['best_epoch']}, last {r['val_accuracy_last']:.3f}", file=sys.stderr)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
