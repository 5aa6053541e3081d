"""The README's "Models in" examples (issue #17), run as a user runs them: one example per model kind.

Each example's blocks are taken verbatim from README.md (an example starts at its ``<!-- example: KIND -->``
comment). Its ``python`` block runs in an empty folder of its own, with globals of its own; to pay for importing
torch, torchvision, timm and transformers once instead of once per example, every selected example's python block
runs in one fresh process (``run_python_blocks``). Its ``json`` block is saved under the spec name that its
``embedlab analyze`` command reads, and that command runs in a process of its own through the real command line (the
``embedlab`` console script), which must exit 0 with nothing on stderr. To keep each test to a few seconds the command
gets ``--analyses accuracy,knn,align_uniform``, a ``--cache-dir`` in the test's folder and ``--no-progress``
appended; the README's command runs every analysis. The README's ``embedlab report`` then runs once over every model
the examples analysed.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("torchvision", "timm", "torchscript", "export", "huggingface", "text", "npz")
# optional packages a kind's example imports
NEEDS = {"timm": "timm", "huggingface": "transformers", "text": "sentence_transformers"}
# The text example's encoder is the README's one download (SentenceTransformer(...).save("minilm")): after the text
# example's python block, this saves a tiny randomly initialised encoder there instead, with the words of the
# example's data as its vocabulary (a BERT of width 16, two layers, mean pooling).
TEXT_ENCODER = """
import json, torch
from pathlib import Path
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast

words = sorted({w for p in Path(".").glob("*/*.jsonl") for line in p.read_text().splitlines()
                for w in json.loads(line)["text"].lower().split()})
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
torch.manual_seed(0)
BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)).save_pretrained("tiny-bert")
BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained("tiny-bert")
SentenceTransformer(modules=[Transformer("tiny-bert"), Pooling(16, "mean")]).save("minilm")
"""
ANALYSES = "accuracy,knn,align_uniform"

# runs each (kind, folder, code) job: its own folder as the working directory, its own globals; a failure is the
# job's traceback, and the next job still runs
RUNNER = """
import json, os, sys, traceback
jobs, status_file = json.loads(sys.argv[1]), sys.argv[2]
status = {}
for kind, folder, code in jobs:
    os.chdir(folder)
    try:
        exec(compile(code, f"<README example {kind}>", "exec"), {"__name__": "__main__"})
        status[kind] = None
    except BaseException:
        status[kind] = traceback.format_exc()
with open(status_file, "w") as f:
    json.dump(status, f)
"""


def readme_examples() -> dict[str, str]:
    """The text of each ``<!-- example: KIND -->`` in README.md's "Models in" part, up to the next comment."""
    text = (ROOT / "README.md").read_text()
    part = text[text.index("**Models in.**"):]
    part = part[:part.index("\n## ")]
    found = re.findall(r"<!-- example: ([\w-]+) -->\n(.*?)(?=<!--|\Z)", part, re.S)
    return dict(found)


def blocks(example: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", example, re.S | re.M)


def command(example: str, name: str) -> list[str]:
    """The example's one ``embedlab NAME …`` line, split as a shell splits it."""
    lines = [line for b in blocks(example, "bash") for line in b.splitlines() if line.startswith(f"embedlab {name} ")]
    assert len(lines) == 1, f"expected one `embedlab {name}` line, got {lines}"
    return shlex.split(lines[0])


def embedlab(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``embedlab ARGS`` through the console script beside this Python (``python -m embedlab`` without one)."""
    script = Path(sys.executable).with_name("embedlab")
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", "embedlab"]
    return subprocess.run([*exe, *args], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=600)


def _env() -> dict[str, str]:
    # one thread: the test machines have 2 shared cores; offline: an example that needs the hub must fail here
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_python_blocks(folders: dict[str, Path], status_dir: Path) -> dict[str, str | None]:
    """Each kind's python block, verbatim, in ``folders[kind]`` (empty), all in one fresh process (``RUNNER``).
    Returns each kind's traceback, or None where its block ran."""
    examples = readme_examples()
    jobs = []
    for kind, folder in folders.items():
        (code,) = blocks(examples[kind], "python")
        jobs.append((kind, str(folder), code + (TEXT_ENCODER if kind == "text" else "")))
    status = status_dir / "python-blocks.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs), str(status)], capture_output=True, text=True,
                          env=_env(), timeout=900)
    assert proc.returncode == 0 and status.is_file(), proc.stderr[-3000:]
    return json.loads(status.read_text())


def analyze_example(kind: str, folder: Path) -> dict:
    """The example's spec saved in ``folder`` (where its python block ran), then its ``embedlab analyze`` with the
    test's extra options. Returns the model's results.json."""
    example = readme_examples()[kind]
    args = command(example, "analyze")
    (model,) = [a for a in args if a.endswith((".json", ".npz"))]
    specs = blocks(example, "json")
    if model.endswith(".json"):
        assert len(specs) == 1 and f"`{model}`" in example, f"the {kind} example names its spec file {model}"
        name = json.loads(specs[0])["name"]
        (folder / model).write_text(specs[0])
    else:
        assert not specs, f"the {kind} example has a spec but analyses {model}"
        name = Path(model).stem
    proc = embedlab([*args[1:], "--analyses", ANALYSES, "--cache-dir", str(folder / "cache"), "--no-progress"],
                    folder)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    return json.loads((folder / args[args.index("--out") + 1] / name / "results.json").read_text())


@pytest.fixture(scope="module")
def python_blocks(request, tmp_path_factory) -> dict[str, tuple[Path, str | None]]:
    """The python blocks of the selected examples whose packages are installed, run once: kind → (its folder, its
    traceback or None)."""
    selected = {item.callspec.params["kind"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_readme_example_runs" and hasattr(item, "callspec")}
    folders = {k: tmp_path_factory.mktemp(k) for k in KINDS
               if k in selected and (k not in NEEDS or importlib.util.find_spec(NEEDS[k]) is not None)}
    status = run_python_blocks(folders, tmp_path_factory.mktemp("status")) if folders else {}
    return {k: (folders[k], status[k]) for k in folders}


@pytest.fixture(scope="module")
def results_of_all(tmp_path_factory) -> Path:
    """One results folder that every example's test adds its model to, for the report test."""
    return tmp_path_factory.mktemp("all-results")


@pytest.fixture(scope="module")
def files_of() -> dict[str, set[str]]:
    """kind → the files its example wrote besides results/ and the cache (the README says one folder holds all)."""
    return {}


def test_the_readme_has_one_example_per_kind():
    examples = readme_examples()
    assert set(KINDS) <= set(examples), sorted(examples)
    for kind in KINDS:
        assert len(blocks(examples[kind], "python")) == 1, kind
        command(examples[kind], "analyze")
    command(examples["report"], "report")


@pytest.mark.slow  # real processes, about 10 s each
@pytest.mark.parametrize("kind", KINDS)
def test_readme_example_runs(kind, python_blocks, results_of_all, files_of):
    if kind in NEEDS:
        pytest.importorskip(NEEDS[kind], reason=f"the README's {kind} example needs {NEEDS[kind]}")
    folder, error = python_blocks[kind]
    assert error is None, f"the README's {kind} python block failed:\n{error}"
    r = analyze_example(kind, folder)
    metrics = {k: m["value"] for k, m in r["metrics"].items()}
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()), metrics
    assert {"knn_accuracy", "alignment", "uniformity"} <= set(metrics), sorted(metrics)
    if kind == "text":  # an encoder: embeddings only
        assert r["skipped"] == {"accuracy": "the model provides no logits (embeddings only)"}, r["skipped"]
        assert r["dataset"]["classes"] == ["food", "sport"]
    else:
        assert 0.0 <= metrics["accuracy"] <= 1.0 and not r["skipped"], r["skipped"]
        assert len(r["dataset"]["classes"]) == 10
    shutil.copytree(folder / "results" / r["model"]["name"], results_of_all / r["model"]["name"])
    files_of[kind] = {f.name for f in folder.iterdir()} - {"results", "cache"}


@pytest.mark.slow
def test_readme_report_command(tmp_path, results_of_all, files_of):
    """The README's ``embedlab report`` over every model the example tests analysed (over the npz example's alone
    when this test runs by itself); and no two examples write the same file, so they can share one folder."""
    writer: dict[str, str] = {}
    for kind, files in files_of.items():
        for f in files:
            assert writer.setdefault(f, kind) == kind, f"the {writer[f]} and {kind} examples both write {f}"
    if not any(results_of_all.iterdir()):
        (tmp_path / "npz").mkdir()
        assert run_python_blocks({"npz": tmp_path / "npz"}, tmp_path) == {"npz": None}
        analyze_example("npz", tmp_path / "npz")
        shutil.copytree(tmp_path / "npz" / "results" / "pca", results_of_all / "pca")
    args = command(readme_examples()["report"], "report")
    assert args[2] == "results"
    shutil.copytree(results_of_all, tmp_path / "all" / "results")
    proc = embedlab(args[1:], tmp_path / "all")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    html = (tmp_path / "all" / args[args.index("-o") + 1]).read_text()
    assert all(d.name in html for d in results_of_all.iterdir())
