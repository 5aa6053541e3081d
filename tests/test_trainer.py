"""The training loop: non-finite losses, several seeds, TensorBoard events, speed flags, help text."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import embedlab.trainers.loop
from embedlab.checkpoint import load_checkpoint
from embedlab.cli import build_parser, main
from embedlab.config import TrainConfig
from embedlab.trainers import load_state, state_digest, train


pytestmark = pytest.mark.usefixtures("one_thread")


class _NaNAt:
    """A mixing method that delegates to another but returns NaN at its ``at``-th loss."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, x, y, gen):
        self.calls += 1
        loss = self.inner.loss(model, x, y, gen)
        return loss * float("nan") if self.calls == self.at else loss


def test_non_finite_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = embedlab.trainers.loop.create_method
    monkeypatch.setattr(embedlab.trainers.loop, "create_method", lambda name, opts: _NaNAt(real(name, opts), at=25))
    out = tmp_path / "run"
    # digits: 1257 training examples, batch 64 → 19 steps per epoch; step 25 is the 6th step of epoch 2
    rc = main(["train", "--epochs", "3", "--out", str(out), "--no-progress", "--set", "log_every=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == (f"embedlab: error: non-finite loss (nan) at epoch 2, step 25: training stopped; "
                      f"the last good checkpoint (epoch 1) is kept in {out}")
    state, meta = load_checkpoint(out)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert state_digest(state) == state_digest(load_state(out / "train_state.pt")["model"])
    assert json.loads((out / "meta.json").read_text())["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    # in the first epoch there is nothing to keep, and the message says so
    monkeypatch.setattr(embedlab.trainers.loop, "create_method", lambda name, opts: _NaNAt(real(name, opts), at=3))
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"step 3: training stopped; no checkpoint was written to "
                                                    f"{tmp_path / 'r2'}")


def test_seeds_write_one_run_each_with_tensorboard_events(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    assert main(["train", "--seeds", "0,3", "--epochs", "2", "--method", "mixup", "--out", str(out),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed3"]
    digests = set()
    for seed in (0, 3):
        run = out / f"seed{seed}"
        meta = json.loads((run / "meta.json").read_text())
        assert meta["config"]["seed"] == seed and meta["epoch"] == 2 and meta["best"]["epoch"] in (1, 2)
        digests.add(state_digest(load_file(run / "model.safetensors")))
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events))
        acc.Reload()
        assert {"train/loss", "val/accuracy", "val/loss", "train/lr"} <= set(acc.Tags()["scalars"])
        got = [(e.step, e.value) for e in acc.Scalars("val/accuracy")]
        assert got == [(h["epoch"], pytest.approx(h["val_accuracy"], rel=1e-6)) for h in history]
    assert len(digests) == 2  # different seeds, different models
    # a method's own statistics go to metrics.jsonl and TensorBoard (method/…)
    run = tmp_path / "cm"
    assert main(["train", "--method", "confmix", "-O", "warmup=1", "--epochs", "2", "--out", str(run),
                 "--no-progress"]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "confmix_alpha" not in history[0] and 1e-3 <= history[1]["confmix_alpha"] <= 1
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("method/confmix_alpha")] == [
        (2, pytest.approx(history[1]["confmix_alpha"], rel=1e-6))]
    assert main(["train", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path / "x")]) == 2
    assert "either --seed or --seeds" in capsys.readouterr().err
    assert main(["train", "--seeds", "0,3", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    assert "seed0/model.safetensors already exists" in capsys.readouterr().err


def test_channels_last_and_bf16_flags_run_on_cpu(tmp_path):
    out = tmp_path / "cl"
    assert main(["train", "--epochs", "1", "--channels-last", "--amp", "bf16", "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["channels_last"] is True and meta["training"]["amp"] == "bf16"
    assert meta["config"]["channels_last"] is True and meta["config"]["amp"] == "bf16"
    state, _ = load_checkpoint(out)
    assert all(v.is_contiguous() for v in state.values())
    assert json.loads((out / "metrics.jsonl").read_text())["val_accuracy"] > 0.1
    # on CPU the defaults are fp32 and contiguous tensors
    cfg = TrainConfig()
    assert (cfg.amp, cfg.channels_last, cfg.compile, cfg.deterministic) == ("auto", None, False, False)


def test_compile_flag_compiles_stages_and_changes_nothing(tmp_path, monkeypatch):
    """``--compile`` compiles every stage in place; with dynamo's eager backend (no C++ code generation: inductor
    takes ~35 s on 2 CPU cores, see test_compile_inductor) the weights equal an uncompiled run's bit for bit."""
    compiled = []
    real = torch.nn.Module.compile

    def eager(self, *a, **kw):
        compiled.append(type(self).__name__)
        return real(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager)
    torch._dynamo.reset()
    base = TrainConfig(epochs=1, device="cpu", deterministic=True)
    train(base, tmp_path / "plain", progress=False)
    train(TrainConfig(**{**base.__dict__, "compile": True}), tmp_path / "compiled", progress=False)
    torch._dynamo.reset()
    assert compiled == ["Sequential"] * 3  # cnn-gap's three stages
    assert json.loads((tmp_path / "compiled" / "meta.json").read_text())["training"]["compile"] is True
    assert state_digest(load_file(tmp_path / "plain" / "model.safetensors")) == \
        state_digest(load_file(tmp_path / "compiled" / "model.safetensors"))


@pytest.mark.slow
def test_compile_inductor(tmp_path, request):
    """The real thing: inductor generates C++ for every stage (~35 s on 2 CPU cores, measured)."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("inductor compilation takes ~35 s on 2 CPU cores; select with -m slow")
    torch._dynamo.reset()
    assert main(["train", "--epochs", "1", "--compile", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["training"]["compile"] is True
    torch._dynamo.reset()


def test_no_validation_split_keeps_best_equal_to_last(tmp_path):
    cfg = TrainConfig(dataset="toy-gmm", dataset_options={"n_val": 0, "n_test": 100, "n_train": 200}, epochs=2,
                      batch_size=50, device="cpu")
    train(cfg, tmp_path / "r", progress=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["best"] == {"epoch": 2, "val_accuracy": None} and meta["history"][-1]["val_accuracy"] is None


def test_every_train_option_is_explained():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    for action in sub._actions:
        assert action.help and len(action.help) > 10, action.option_strings
    text = sub.format_help()
    for needle in ("--recipe", "--set", "--seeds", "--resume", "--compile", "--channels-last", "--amp",
                   "--deterministic", "torchrun --nproc_per_node=N", "cifar10-wrn16-8", "log_every"):
        assert needle in text, needle


def test_step_schedule_matches_multistep(tmp_path):
    from embedlab.trainers.loop import build_optimizer

    cfg = TrainConfig(lr=0.1, schedule="step", milestones=(2, 3), epochs=4)
    opt, sched = build_optimizer(cfg, torch.nn.Linear(2, 2), steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1] * 10 + [0.01] * 5 + [0.001] * 5)


def test_docs_have_a_training_section():
    text = (Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md").read_text()
    assert "## Training" in text and "torchrun --nproc_per_node" in text and "--resume" in text


def test_missing_tensorboard_warns_and_training_goes_on(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        train(TrainConfig(epochs=1, device="cpu"), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "model.safetensors").exists() and not (tmp_path / "r" / "tensorboard").exists()


def test_piped_training_log_is_one_plain_line_per_epoch_with_the_lr_used(tmp_path):
    """A pipe gets no progress bar (no escape sequence, TQDM_DISABLE honoured) and one line per epoch: loss,
    train accuracy, val accuracy, the learning rate the epoch's first step used (0.05 at epoch 1, not the value
    after it), images/s and ETA; metrics.jsonl records the same."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, "-m", "embedlab", "train", "--epochs", "3", "--model-opt", "width=4",
                        "--device", "cpu", "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout + p.stderr and "\r" not in p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert " lr 0.05 " in lines[0] and "img/s" in lines[0] and "ETA" in lines[0] and "train_acc" in lines[0]
    hist = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["lr"] == 0.05 and hist[-1]["lr"] > 0 and 0 <= hist[-1]["train_accuracy"] <= 1


def test_train_accuracy_of_erm_is_the_accuracy_on_its_training_labels():
    import torch

    from embedlab.methods import create_method
    from embedlab.methods.base import track_agreement
    from embedlab.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn-gap", 10, (1, 8, 8), width=4)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    agree = torch.zeros(2, dtype=torch.float64)
    with track_agreement(agree):
        create_method("erm").loss(model, x, y, torch.Generator().manual_seed(0))
    assert agree.tolist() == [float((model(x).argmax(1) == y).sum()), 32.0]
    create_method("erm").loss(model, x, y, torch.Generator())  # outside the context: nothing recorded
    assert agree[1] == 32


def test_rank_seeds_never_replay_another_seed_and_rank_0_keeps_the_run_seed():
    from embedlab.trainers.distributed import rank_seed

    seeds = {(s, r): rank_seed(s, r) for s in range(20) for r in range(8)}
    assert all(seeds[(s, 0)] == s for s in range(20))  # single-process runs are unchanged
    assert len(set(seeds.values())) == len(seeds)  # seed + rank made (1, r) == (0, r + 1)
    assert all(0 <= v < 2**63 for v in seeds.values())


def test_a_training_state_with_another_device_generator_resumes_with_a_warning():
    """A CUDA run resumed on CPU: the mixing generator's saved state (CUDA's is 16 bytes, CPU's 5,056) cannot be
    set on a CPU generator; it is reseeded from that state with a warning instead of a RuntimeError."""
    import warnings

    import torch

    from embedlab.errors import EmbedlabWarning
    from embedlab.trainers.state import capture_rng, restore_rng

    gen, loader = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    rng = capture_rng(torch.device("cpu"), gen, loader)
    rng["mix"] = torch.arange(16, dtype=torch.uint8)  # the layout of a CUDA generator's state
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restore_rng(rng, torch.device("cpu"), gen, loader)
    assert any(issubclass(w.category, EmbedlabWarning) and "another device type" in str(w.message) for w in caught)
    a = torch.rand(3, generator=gen)
    restore_rng(rng, torch.device("cpu"), gen, loader)
    assert torch.equal(a, torch.rand(3, generator=gen))  # the reseed is a function of the saved state


def test_compiled_stages_get_a_recompile_budget_above_dynamos_default():
    import torch._dynamo.config as dynamo

    from embedlab.models import create_model
    from embedlab.trainers.loop import RECOMPILE_LIMIT, _compile

    _compile(create_model("cnn-gap", 10, (1, 8, 8), width=4))
    assert dynamo.recompile_limit >= RECOMPILE_LIMIT > 8
