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
    ("mixup[alpha=inf]", r"option alpha: expected a finite number, got inf"),
    ("mixup[alpha=1e400]", r"option alpha: expected a finite number"),
    ("mixup[alpha=nan]", r"option alpha: expected a finite number"),
    ("mixup[alpha=true]", r"option alpha: expected float, got True"),
    ("multimix[n=1;n=2]", r"option 'n' is given twice"),
    ("multimix[n=100000000000]", r"option n: at most 100,000 mixed examples"),
    ("erm,mixup[alphä=1]", r"unknown option\(s\) alphä"),
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
        assert e["diff_to_baseline"]["mean"] == pytest.approx(statistics.fmean(d))
        # two seeds: no interval is reported (t_{0.975, 1} = 12.7 stretches the range), nothing is significant
        assert e["diff_to_baseline"]["ci95"] is None and e["diff_to_baseline"]["ci95_na"] == "n ≤ 2"
        assert e["diff_to_baseline"]["significant"] is False
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
    # every spec is checked before the first run trains: erm is not trained when mixup's alpha is not finite
    assert main(["study", "benchmark", "--methods", "erm,mixup[alpha=inf]", "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 2
    assert "expected a finite number" in capsys.readouterr().err and not (tmp_path / "c" / "runs").exists()


def _bench_file(folder):
    """A benchmark.json as written before the n ≤ 2 rule: one 2-seed difference with an interval that excludes 0,
    one 3-seed difference of zero width (identical per-seed differences), one genuine 3-seed interval above 0."""
    folder.mkdir(parents=True, exist_ok=True)

    def e(mean, diff=None, n=3):
        out = {"mean": mean, "std": 0.01, "ci95": [mean - 0.02, mean + 0.02], "n": n}
        if diff is not None:
            out["diff_to_baseline"] = {"mean": diff[0], "std": diff[3], "ci95": [diff[1], diff[2]], "n": n,
                                       "per_seed": {str(s): diff[0] for s in range(n)}}
        return out

    rows = [{"label": "erm", "seeds_done": [0, 1, 2], "metrics": {"accuracy": e(0.5), "ece": e(0.1), "nll": e(1.0)}},
            {"label": "mixup", "seeds_done": [0, 1, 2],
             "metrics": {"accuracy": e(0.666, (0.166, 0.166, 0.166, 0.0)),             # zero width, n = 3
                         "ece": e(0.08, (-0.02, -0.09, 0.05, 0.03)),                   # genuine, includes 0
                         "nll": e(0.9, (-0.111, -0.2, -0.022, 0.04))}},                # genuine, excludes 0
            {"label": "multimix", "seeds_done": [0, 1],
             "metrics": {"accuracy": e(0.7, (0.2, 0.15, 0.25, 0.005), n=2)}}]          # n = 2
    data = {"kind": "embedlab.study", "study": "benchmark", "baseline": "erm", "seeds": [0, 1, 2],
            "config": {"dataset": "digits"}, "directions": {"accuracy": "higher", "ece": "lower", "nll": "lower"},
            "rows": rows}
    (folder / "benchmark.json").write_text(json.dumps(data))
    return folder / "benchmark.json", data


def test_no_interval_and_no_mark_with_two_seeds_or_zero_width_in_every_renderer(tmp_path, capsys):
    """n ≤ 2 or a zero-width interval: "n/a", never starred or bolded — in the JSON rule (embedlab.stats), the CLI
    table, the HTML and Markdown reports, LaTeX and RESULTS.md's table script — also for files written before."""
    import importlib.util
    from pathlib import Path

    from embedlab.stats import interval, significant
    from embedlab.trainers.studies.benchmark import markdown_table

    path, data = _bench_file(tmp_path / "b")
    rows = {r["label"]: r for r in data["rows"]}
    zero, n2 = rows["mixup"]["metrics"]["accuracy"]["diff_to_baseline"], rows["multimix"]["metrics"]["accuracy"]["diff_to_baseline"]
    genuine = rows["mixup"]["metrics"]["nll"]["diff_to_baseline"]
    assert interval(zero) is None and interval(n2) is None and not significant(zero) and not significant(n2)
    assert interval(genuine) == (-0.2, -0.022) and significant(genuine)
    assert mean_ci([0.166, 0.166, 0.166])["ci95"] is None and mean_ci([0.3, 0.4])["ci95"] is None
    assert mean_ci([0.1, 0.2, 0.4])["ci95"] is not None

    cli = markdown_table(data, ("accuracy", "nll"))
    assert "+16.60 pp [n/a]" in cli and "+20.00 pp [n/a]" in cli and "-0.11 [-0.20, -0.02] *" in cli
    assert cli.count("*") == 1

    spec = importlib.util.spec_from_file_location("results_tables", Path(__file__).parents[1] / "benchmarks" / "results_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = mod.table(data, ["accuracy", "ece", "nll"])
    assert "+16.60 [n/a]" in md and "+20.00 [n/a]" in md and "-0.111 [-0.200, -0.022] *" in md and md.count(" *") == 1

    for fmt, name in (("html", "r.html"), ("md", "r.md"), ("tex", "r.tex")):
        assert main(["report", str(path), "-o", str(tmp_path / name), "--format", fmt]) == 0, capsys.readouterr().err
    html = (tmp_path / "r.html").read_text()
    assert "+0.1660 [n/a]" in html and "+0.2000 [n/a]" in html and "-0.1110 [-0.2000, -0.0220] *" in html
    assert "[+0.1660, +0.1660]" not in html and "[+0.1500, +0.2500]" not in html
    mdr = (tmp_path / "r.md").read_text().replace("\\", "")  # Markdown escapes [ ] *
    assert "+0.1660 [n/a]" in mdr and "-0.1110 [-0.2000, -0.0220] *" in mdr and "[+0.1500, +0.2500]" not in mdr
    tex = (tmp_path / "r.tex").read_text()
    assert r"$+0.1660$ [n/a]" in tex and r"$+0.2000$ [n/a]" in tex
    assert r"$\mathbf{-0.1110\ [-0.2000, -0.0220]}$" in tex and tex.count(r"\mathbf{+0.") == 0


def test_a_run_folder_has_one_writer_and_the_grid_comes_back_to_a_held_run(tmp_path, capsys, monkeypatch):
    """``train`` holds its --out's lock: a second writer is one line (BusyError, exit 2 from the CLI). A benchmark
    that meets a held run skips it, finishes the others (seed-major: every method's seed 0 first) and then waits
    for it, so two invocations of one grid never train the same run at once."""
    import threading

    from embedlab.errors import BusyError
    from embedlab.io import exclusive

    out = tmp_path / "bm"
    held = out / "runs" / "erm" / "seed0"
    with exclusive(held, "training", "wait"):
        argv = ["train", "--epochs", "1", "--data-opt", "train_subset=200", "--model-opt", "width=4", "--device",
                "cpu", "--no-progress", "--out", str(held)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another embedlab process is training" in err and str(held) in err
        held.mkdir(parents=True)
        (held / "train_state.pt").write_bytes(b"x")  # --force does not delete a run another process is training
        assert main(argv + ["--force"]) == 2 and "another embedlab process is training" in capsys.readouterr().err
        assert (held / "train_state.pt").exists()
        (held / "train_state.pt").unlink()
        held.rmdir()
        import dataclasses

        from embedlab.recipes import load_recipe
        from embedlab.trainers import train

        with pytest.raises(BusyError):
            train(dataclasses.replace(load_recipe("digits").resolved(), epochs=1, device="cpu"), held, progress=False)
    assert not any(held.parent.glob(".seed0.lock"))

    release = threading.Event()

    def hold():
        with exclusive(held, "training", "wait"):
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    lines: list[str] = []

    def log(s):
        lines.append(s)
        if "waiting for 1 run(s)" in s:
            release.set()  # the "other process" finishes only once the grid has done everything else

    argv = ["study", "benchmark", "--recipe", "digits", "--epochs", "1", "--subset", "200", "--seeds", "0,1",
            "--methods", "erm,mixup", "--analyses", "accuracy", "--out", str(out), "--device", "cpu",
            "--no-progress", "--no-report"]
    import embedlab.trainers.studies.benchmark as B
    real = B.run_benchmark
    monkeypatch.setattr(B, "run_benchmark", lambda *a, **k: real(*a, **{**k, "log": log, "poll_seconds": 0.2}))
    try:
        assert main(argv) == 0
    finally:
        release.set()
        holder.join()
    order = [line.split("] ", 1)[1] for line in lines if line.startswith("[benchmark ") and "/4]" in line]
    assert order == ["erm, seed 0", "mixup, seed 0", "erm, seed 1", "mixup, seed 1", "erm, seed 0"]
    assert any("erm, seed 0: another process holds it" in line for line in lines)
    res = json.loads((out / "benchmark.json").read_text())
    assert res["complete"] and res["results"]["erm"] == {"1": "erm-seed1", "0": "erm-seed0"}


def test_a_hand_edited_results_json_is_not_aggregated_and_the_report_warns(tmp_path, capsys):
    """results.json records its own digest: a resumed study re-analyses a run whose results.json was edited after
    it was written (instead of aggregating the edited value), and the report names such a file in a warning."""
    out = tmp_path / "bm"
    argv = ["study", "benchmark", "--recipe", "digits", "--epochs", "1", "--subset", "200", "--seeds", "0",
            "--methods", "erm", "--analyses", "accuracy", "--out", str(out), "--device", "cpu", "--no-progress",
            "--no-report"]
    assert main(argv) == 0
    res_path = out / "results" / "erm-seed0" / "results.json"
    res = json.loads(res_path.read_text())
    true = res["metrics"]["accuracy"]["value"]
    assert json.loads((out / "benchmark.json").read_text())["rows"][0]["metrics"]["accuracy"]["mean"] == true
    res["metrics"]["accuracy"]["value"] = 0.999
    res_path.write_text(json.dumps(res))
    capsys.readouterr()
    assert main(["report", str(out / "results"), "-o", str(tmp_path / "r.md"), "--format", "md"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "was changed after embedlab wrote it" in err and str(res_path) in err
    assert main(argv) == 0
    assert "was changed after it was written" in capsys.readouterr().out
    assert json.loads((out / "benchmark.json").read_text())["rows"][0]["metrics"]["accuracy"]["mean"] == true
    assert json.loads(res_path.read_text())["metrics"]["accuracy"]["value"] == true
