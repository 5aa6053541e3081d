"""A tiny end-to-end run of seed 002's ConfMix study (digits instead of CIFAR-10, one epoch)."""
from __future__ import annotations

import json

import pytest

from embedlab.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_confmix_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "confmix", "--recipe", "digits", "--epochs", "2", "--subset", "300", "--seeds", "0,1",
            "--variants", "input ConfMix;manifold mixup α 0→1", "--out", str(out), "--device", "cpu", "--no-progress",
            "--set", "lr=0.002", "--set", "num_workers=0"]
    assert main(argv) == 0
    res = json.loads((out / "confmix.json").read_text())
    assert res["kind"] == "embedlab.study" and res["seeds"] == [0, 1]
    names = [r["variant"] for r in res["rows"]]
    assert names == ["baseline (ERM)", "input ConfMix", "manifold mixup α 0→1"]
    base = res["rows"][0]
    assert base["change_over_baseline_mean"] == 0.0
    for r in res["rows"]:
        assert 0.0 < r["test_accuracy_mean"] <= 1.0 and set(r["per_seed"]) == {"0", "1"}
        diffs = [r["per_seed"][s] - base["per_seed"][s] for s in ("0", "1")]
        assert r["change_over_baseline_mean"] == pytest.approx(sum(diffs) / 2)
    meta = json.loads((out / "runs" / "input-ConfMix-seed1" / "meta.json").read_text())
    assert meta["method"]["name"] == "confmix" and meta["config"]["seed"] == 1
    assert meta["dataset"]["train_subset"] == 300
    assert (meta["config"]["lr"], meta["config"]["num_workers"], res["config"]["lr"]) == (0.002, 0, 0.002)
    # a 2-epoch study scales seed 002's time constants (H = 25, M = 5 at 50 epochs): H = 1, M = 1
    assert (res["half_life"], res["warmup"]) == (1.0, 1)
    assert meta["method"]["options"]["warmup"] == 1
    sched = json.loads((out / "runs" / "manifold-mixup-alpha-0to1-seed0" / "meta.json").read_text())
    assert sched["method"]["options"]["half_life"] == 1.0 and res["rows"][2]["options"]["half_life"] == 1.0
    assert "| input ConfMix |" in capsys.readouterr().out
    # α per epoch: ConfMix's mean confidence after the warm-up epoch; the 0→1 schedule α = 1 − 2^(−t/H), t = epoch − 1
    assert "alpha_per_epoch" not in base
    for seed in ("0", "1"):
        logged = [json.loads(line) for line in
                  (out / "runs" / f"input-ConfMix-seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert res["rows"][1]["alpha_per_epoch"][seed] == [[2, logged[1]["confmix_alpha"]]]
        assert 1e-3 <= logged[1]["confmix_alpha"] <= 1
        assert res["rows"][2]["alpha_per_epoch"][seed] == [[1, 0.0], [2, 0.5]]
    # the report renders the study as its own section: the table's numbers are the file's, α per epoch as a chart
    from embedlab.reports import load_report_inputs, render_report

    inputs = load_report_inputs([out])
    assert inputs.results == [] and [st.path for st in inputs.studies] == [out / "confmix.json"]
    html = render_report([], tmp_path / "r.html", studies=inputs.studies).read_text()
    assert "ConfMix against fixed and scheduled" in html
    for r in res["rows"]:
        assert f"{r['test_accuracy_mean']:.4f} \u00b1 {r['test_accuracy_std']:.4f}" in html
        assert (f"{100 * r['change_over_baseline_mean']:+.2f} \u00b1 {100 * r['change_over_baseline_std']:.2f}"
                in html)
        assert all(f'<td class="num">{v:.4f}</td>' in html for v in r["per_seed"].values())
    assert '<g class="series-group" data-model="input ConfMix">' in html
    assert '<g class="series-group" data-model="manifold mixup α 0→1">' in html
    assert 'data-model="baseline (ERM)"' not in html  # no α, no line
    assert main(["report", str(out), "--format", "md", "-o", str(tmp_path / "study.md")]) == 0
    md = (tmp_path / "study.md").read_text()
    for r in res["rows"]:
        assert f"| {r['variant']} | {r['test_accuracy_mean']:.4f} \u00b1 {r['test_accuracy_std']:.4f} |" in md
    # a second run reuses the finished runs: no training, same weights, same results
    weights = (out / "runs" / "input-ConfMix-seed1" / "model.safetensors").read_bytes()
    assert main(argv) == 0
    assert "is complete (2 epochs); nothing to resume" in capsys.readouterr().out
    assert (out / "runs" / "input-ConfMix-seed1" / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "confmix.json").read_text())["rows"] == res["rows"]


def test_bad_set_is_one_line(tmp_path, capsys):
    assert main(["study", "confmix", "--recipe", "digits", "--set", "epoch=3", "--out", str(tmp_path)]) == 2
    assert "--set: unknown option(s) epoch" in capsys.readouterr().err


def test_unknown_variant(tmp_path, capsys):
    assert main(["study", "confmix", "--recipe", "digits", "--variants", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown ConfMix-study variant 'magic'" in capsys.readouterr().err


def test_time_constants_follow_the_paper_at_50_epochs():
    from embedlab.trainers.studies.confmix import scaled_time_constants, variant_options

    assert scaled_time_constants(50) == (25.0, 5)
    assert scaled_time_constants(10) == (5.0, 1)
    assert variant_options("input ConfMix", 25.0, 5) == {"variant": "input", "warmup": 5}
    assert variant_options("input mixup α=0.5", 25.0, 5) == {"alpha": 0.5, "per_sample": True}
    assert variant_options("input mixup α 1→0", 7.0, 5)["half_life"] == 7.0
