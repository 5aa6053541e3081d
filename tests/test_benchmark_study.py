"""`embedlab study benchmark`: method specs, paired statistics against a hand computation, resume run by run."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from embedlab.cli import main
from embedlab.errors import EmbedlabError
from embedlab.io import sha256_file
from embedlab.trainers.studies.benchmark import mean_ci, paired_difference, parse_method_specs, slug, split_specs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_method_specs_parse_options_and_labels():
    specs = parse_method_specs("erm, multimix[p=1;alpha=0.5],dense_multimix[attention=none]")
    assert [s.label for s in specs] == ["erm", "multimix[p=1;alpha=0.5]", "dense_multimix[attention=none]"]
    assert specs[1].options == {"p": 1, "alpha": 0.5} and specs[2].options == {"attention": "none"}
    assert split_specs("a[x=1,y=2],b") == ["a[x=1,y=2]", "b"]
    assert slug("multimix[p=1;alpha=0.5]") == "multimix-p1-alpha0.5"


@pytest.mark.parametrize("text,match", [
    ("erm,mixpu", r"unknown method 'mixpu'"),
    ("multimix[p=2]", r"option p: must be in \[0, 1\]"),
    ("multimix[p=1", r"unbalanced '\['"),
    ("multimix[p]", r"is not key=value"),
    ("erm,erm", r"repeated"),
    ("", r"at least one method"),
])
def test_method_spec_errors_are_one_line(text, match):
    with pytest.raises(EmbedlabError, match=match):
        parse_method_specs(text)


def test_paired_difference_matches_a_hand_computation():
    values = {0: 0.90, 1: 0.80, 2: 0.95}
    base = {0: 0.85, 1: 0.79, 2: 0.91, 3: 0.5}  # seed 3 has no partner: ignored
    d = [0.05, 0.01, 0.04]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    got = paired_difference(values, base)
    assert got["n"] == 3 and got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
    assert got["ci95"] == pytest.approx([mean - half, mean + half])
    assert got["wins"] == 3 and got["losses"] == 0 and got["per_seed"]["1"] == pytest.approx(0.01)
    one = mean_ci([0.3])
    assert one["std"] is None and one["ci95"] is None
    assert paired_difference({5: 1.0}, {0: 1.0}) is None


def test_benchmark_end_to_end_paired_and_resumable(tmp_path, capsys):
    out = tmp_path / "bm"
    argv = ["study", "benchmark", "--recipe", "digits", "--epochs", "1", "--subset", "300", "--seeds", "0,1",
            "--methods", "erm,mixup,multimix[p=1;n=64]", "--analyses", "accuracy,knn", "--out", str(out),
            "--device", "cpu", "--no-progress", "--title", "tiny"]
    assert main(argv) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert res["kind"] == "embedlab.study" and res["study"] == "benchmark" and res["complete"]
    assert res["baseline"] == "erm" and res["analyses"] == ["accuracy", "knn"]
    assert res["config"]["dataset_options"]["train_subset"] == 300 and res["config"]["epochs"] == 1
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["erm", "mixup", "multimix[p=1;n=64]"]
    # every number recomputed from the per-run results.json files
    acc = {}
    for label, runs in res["results"].items():
        for seed, name in runs.items():
            r = json.loads((out / "results" / name / "results.json").read_text())
            acc[(label, int(seed))] = r["metrics"]["accuracy"]["value"]
            assert r["model"]["meta"]["config"]["seed"] == int(seed)
    for label, row in rows.items():
        e = row["metrics"]["accuracy"]
        vals = [acc[(label, s)] for s in (0, 1)]
        assert e["mean"] == pytest.approx(statistics.fmean(vals)) and e["std"] == pytest.approx(statistics.stdev(vals))
        if label == "erm":
            assert "diff_to_baseline" not in e
            continue
        d = [acc[(label, s)] - acc[("erm", s)] for s in (0, 1)]
        half = 12.706204736174698 * statistics.stdev(d) / math.sqrt(2)  # t_{0.975, 1}
        assert e["diff_to_baseline"]["mean"] == pytest.approx(statistics.fmean(d))
        assert e["diff_to_baseline"]["ci95"] == pytest.approx([statistics.fmean(d) - half, statistics.fmean(d) + half])
    assert rows["multimix[p=1;n=64]"]["options"] == {"p": 1, "n": 64}
    meta = json.loads((out / "runs" / "multimix-p1-n64" / "seed1" / "meta.json").read_text())
    assert meta["method"]["options"]["p"] == 1.0 and meta["method"]["options"]["n"] == 64
    html = (out / "report.html").read_text()
    assert "Paired difference to erm" in html and "multimix[p=1;n=64]" in html
    out_text = capsys.readouterr().out
    assert "| mixup | 2 |" in out_text

    # resume: nothing is retrained or re-analysed; a lost run is redone alone
    # (resuming a finished run rewrites its checkpoint from the saved state: same bytes, so compare contents)
    weights = {p: sha256_file(p) for p in (out / "runs").rglob("model.safetensors")}
    results = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("results.json")}
    lost = out / "runs" / "mixup" / "seed1"
    for f in lost.iterdir():
        if f.is_file():
            f.unlink()
    assert main(argv + ["--no-report"]) == 0
    for p, digest in weights.items():
        assert p.exists() and (sha256_file(p) == digest or p.parent == lost), p
    assert (lost / "model.safetensors").exists() and (lost / "train_state.pt").exists()
    redone = out / "results" / "mixup-seed1" / "results.json"
    for p, t in results.items():
        assert (p.stat().st_mtime_ns == t) == (p != redone), p
    again = json.loads((out / "benchmark.json").read_text())
    assert again["rows"][0]["metrics"]["accuracy"] == res["rows"][0]["metrics"]["accuracy"]


def test_benchmark_bad_baseline_is_one_line(tmp_path, capsys):
    argv = ["study", "benchmark", "--methods", "mixup", "--out", str(tmp_path / "b"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline 'erm' is not one of --methods" in err
    assert main(argv[:-1] + ["--seeds", "1,1", "--baseline", "none", "--no-progress"]) == 2
    assert "--seeds: expected distinct integers" in capsys.readouterr().err
