"""torchrun --nproc_per_node=2 on CPU (gloo): ranks end with the same weights, only rank 0 writes, metrics are
global."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from embedlab.checkpoint import load_model
from embedlab.data import create_dataset
from embedlab.trainers import STATE_FILE, load_state, state_digest
from embedlab.trainers.loop import evaluate, make_loader

EPOCHS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "embedlab",
           "train", "--device", "cpu", "--epochs", str(EPOCHS), "--method", "multimix", "-O", "n=100",
           "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EMBEDLAB_TEST_DUMP_DIR": str(dump)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]

    # DDP kept the ranks in sync (parameters; BatchNorm statistics are averaged each epoch): what rank 1 holds is
    # exactly rank 0's checkpoint
    written = load_file(out / "model.safetensors")
    assert ranks[0]["digest"] == ranks[1]["digest"] == state_digest(written)
    assert state_digest(load_state(out / STATE_FILE)["model"]) == state_digest(written)

    # only rank 0 wrote: rank 1 wrote nothing, one event file, one metrics line per epoch, no stray temp files
    assert ranks[1]["wrote"] == [] and "model.safetensors" in ranks[0]["wrote"]
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "meta.json", "metrics.jsonl",
                                                     "model.safetensors", "tensorboard", STATE_FILE]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))

    # metrics are global: the train loss averages both ranks' steps, validation covers the whole split once
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["world_size"] == 2 and meta["training"]["backend"] == "gloo"
    assert meta["training"]["global_batch_size"] == 128 and meta["training"]["steps_per_epoch"] == 1257 // 2 // 64
    for h, e0, e1 in zip(history, ranks[0]["epochs"], ranks[1]["epochs"]):
        assert e0["steps"] == e1["steps"] == meta["training"]["steps_per_epoch"]
        assert h["train_loss"] == pytest.approx((e0["local_train_loss_sum"] + e1["local_train_loss_sum"]) /
                                                (2 * e0["steps"]), rel=1e-6)
        assert e0["local_val_count"] + e1["local_val_count"] == 180
        assert h["val_accuracy"] == pytest.approx((e0["local_val_correct"] + e1["local_val_correct"]) / 180)
    model, _ = load_model(out)
    val = make_loader(create_dataset("digits").split("val"), 512, shuffle=False)
    assert evaluate(model, val, torch.device("cpu"))["accuracy"] == pytest.approx(history[-1]["val_accuracy"])


@pytest.mark.slow
def test_torchrun_method_statistics_are_averaged_over_processes(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "embedlab",
           "train", "--device", "cpu", "--epochs", "1", "--method", "confmix", "-O", "warmup=0",
           "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EMBEDLAB_TEST_DUMP_DIR": str(dump)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = [json.loads((dump / f"rank{r}.json").read_text())["epochs"][0]["local_method_stats"] for r in (0, 1)]
    (h,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert local[0]["confmix_alpha"] != local[1]["confmix_alpha"]  # each rank saw its own shard
    assert h["confmix_alpha"] == pytest.approx((local[0]["confmix_alpha"] + local[1]["confmix_alpha"]) / 2)
