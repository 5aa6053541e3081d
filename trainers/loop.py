"""The training loop. It takes a mixing strategy object and never branches on a method's name.

One epoch: ``method.on_epoch_start``; for each mini-batch ``loss = method.loss(model, x, y, gen)``, SGD/Adam step;
validation accuracy; checkpoint written atomically (the previous one stays intact until the new one is complete).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from embedlab.checkpoint import WEIGHTS, hardware, save_checkpoint, utc_now, versions, write_meta_json
from embedlab.config import TrainConfig
from embedlab.data import DataSource, collate_batched, create_dataset
from embedlab.errors import EmbedlabError
from embedlab.methods import create_method
from embedlab.models import EmbedNet, create_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedlabError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling comes from its own seeded generator."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last and len(ds) > batch_size,
                      generator=gen, collate_fn=collate_batched, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``loader``."""
    model.eval()
    correct, total, loss = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1)}


def build_optimizer(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=False)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    elif cfg.schedule == "step":
        ms = [m * steps_per_epoch for m in cfg.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.lr_gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, sched


def build(cfg: TrainConfig) -> tuple[DataSource, EmbedNet, dict[str, Any]]:
    """Dataset and freshly initialised model (seeded), plus the model description saved in checkpoints."""
    data = create_dataset(cfg.dataset, cfg.data_root, cfg.download, **cfg.dataset_options)
    info = data.info
    name = cfg.model or info.default_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            model = create_model(name, info.num_classes, info.input_shape, info.mean, info.std, **cfg.model_options)
        except TypeError as e:
            raise EmbedlabError(f"bad option for model {name!r}: {e}") from None
    desc = {"name": name, "options": dict(cfg.model_options), "num_classes": info.num_classes,
            "input_shape": list(info.input_shape), "mean": list(info.mean) if info.mean else None,
            "std": list(info.std) if info.std else None, "embed_dim": model.embed_dim}
    return data, model, desc


def train(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True,
          log: Callable[[str], None] = print) -> Path:
    """Train one run; returns the path of the last-epoch checkpoint ``out_dir/model.safetensors``."""
    cfg.validate()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    data, model, model_desc = build(cfg)
    method = create_method(cfg.method, cfg.method_options)
    method.check_model(model)
    cfg = dataclasses.replace(cfg, model=model_desc["name"])
    torch.manual_seed(cfg.seed)  # augmentation transforms in the main process draw from the global RNG
    model.to(device)

    pin = device.type == "cuda"
    train_loader = make_loader(data.split("train", augment=True), cfg.batch_size, shuffle=True, seed=cfg.seed,
                               drop_last=True, num_workers=cfg.num_workers, pin_memory=pin)
    val_loader = make_loader(data.split("val"), 512, shuffle=False, num_workers=cfg.num_workers, pin_memory=pin)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    opt, sched = build_optimizer(cfg, model, len(train_loader))

    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "model": model_desc,
        "method": {"name": cfg.method, "options": method.options_dict()},
        "dataset": {**data.describe(), "classes": list(data.info.classes), "input_shape": list(data.info.input_shape)},
        "versions": versions(), "hardware": hardware(device), "created_utc": utc_now(),
        "history": [],
    }
    best_acc = -1.0
    step = 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {cfg.method}", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        method.on_epoch_start(epoch, cfg.epochs)
        loss_sum, n_batches = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = method.loss(model, x, y, gen)
            step += 1
            if not torch.isfinite(loss):
                raise EmbedlabError(f"non-finite loss ({float(loss)}) at epoch {epoch}, step {step}; "
                                    f"the last good checkpoint is kept in {out}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            n_batches += 1
        val = evaluate(model, val_loader, device)
        rec = {"epoch": epoch, "train_loss": loss_sum / max(n_batches, 1), "val_accuracy": val["accuracy"],
               "val_loss": val["loss"], "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        meta["history"].append(rec)
        meta["epoch"] = epoch
        if val["accuracy"] > best_acc:
            best_acc = val["accuracy"]
            meta["best"] = {"epoch": epoch, "val_accuracy": best_acc}
            save_checkpoint(out / "best.safetensors", model, meta)
        meta["last"] = {"epoch": epoch, "val_accuracy": val["accuracy"]}
        save_checkpoint(out / WEIGHTS, model, meta)
        write_meta_json(out, meta)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", val_acc=f"{val['accuracy']:.3f}")
    log(f"{cfg.method}: best val accuracy {best_acc:.4f} (epoch {meta['best']['epoch']}), "
        f"last {meta['last']['val_accuracy']:.4f} → {out / WEIGHTS}")
    return out / WEIGHTS
