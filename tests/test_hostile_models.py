"""Hostile and careless model folders, data folders and API calls (issue #24, "Hardening III", part B): a
Hugging Face folder asking to run its own code, folders and files that would hang a read (FIFOs, symbolic-link
loops, a home directory given as weights), configs and weights that lie, broken text files and image trees. Each
is one line on stderr with exit status 2 (or a success), no traceback, and no prompt on the terminal."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.cli import main
from embedlab.errors import EmbedlabError
from tests.test_hostile_input import _error, _outcome
from tests.test_text import _write_texts, encoder  # noqa: F401 - the fixture: a tiny sentence-transformers folder

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers", reason="the huggingface kind needs embedlab[hf] (transformers)")


def _cli(*argv, cwd: Path, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "embedlab", *map(str, argv)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (proc.returncode,
                                                                                         proc.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    """A tiny randomly initialised ViT image classifier (10 classes), written by save_pretrained."""
    folder = tmp_path_factory.mktemp("vit") / "vit"
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3,
                                   image_std=[0.25] * 3).save_pretrained(folder)
    return folder


def _hf_spec(tmp_path: Path, folder: Path, name: str = "m", **extra) -> Path:
    spec = {"name": name, "kind": "huggingface", "weights": str(folder), "dataset": "digits", **extra}
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    return tmp_path / f"{name}.json"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ============================================================================ 1. no prompt for remote code, ever
_PAYLOAD = "open({marker!r}, 'w').write('ran')\nclass Evil:\n    pass\n"


@pytest.mark.parametrize("config, hook", [  # real processes importing transformers, about 6 s each
    ("config.json", {"AutoConfig": "evil.Evil", "AutoModelForImageClassification": "evil.Evil"}),
    ("preprocessor_config.json", {"AutoImageProcessor": "evil.Evil"}),
    ("tokenizer_config.json", {"AutoTokenizer": ["evil.Evil", None]}),
])
def test_a_folder_asking_to_run_its_code_is_refused_without_a_prompt(tmp_path, vit, encoder, config, hook):
    """``auto_map`` in any config makes transformers ask on the terminal whether to run the folder's code, and
    run it on yes: embedlab refuses the folder before transformers reads it, with ``yes`` on stdin."""
    text = config == "tokenizer_config.json"
    folder = tmp_path / "evil"
    shutil.copytree(encoder if text else vit, folder)
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(_PAYLOAD.format(marker=str(marker)))
    _edit_json(folder / config, auto_map=hook)
    if text:
        _write_texts(tmp_path / "texts", splits=(("test", 4),))
        spec = _hf_spec(tmp_path, folder, dataset="text", data_root="texts")
    else:
        spec = _hf_spec(tmp_path, folder)
    proc = _cli("analyze", spec, "--out", tmp_path / "res", "--analyses", "knn", "--cache-dir", tmp_path / "c",
                "--no-progress", cwd=tmp_path, stdin="y\n" * 1000)
    line = _one_line(proc)
    assert "auto_map" in line and config in line and "never runs" in line, line
    assert not marker.exists()
    assert "[y/N]" not in proc.stdout + proc.stderr


def test_every_transformers_load_passes_trust_remote_code_false():
    """No ``from_pretrained`` / ``SentenceTransformer(...)`` call in embedlab without ``trust_remote_code=False``."""
    import re

    src = (Path(__file__).resolve().parents[1] / "embedlab" / "external.py").read_text()
    calls = re.findall(r"(?:\.from_pretrained|SentenceTransformer)\((.*?)\)\n", src, flags=re.S)
    assert len(calls) >= 4
    for call in calls:
        assert "trust_remote_code=False" in call, call


# ============================================================================ 3. nothing hangs
_FIFO_SCRIPT = """
import json, os, sys
from embedlab.cli import main
root = sys.argv[1]
out = {}
for case in ("arrays.npz", "model.safetensors", "spec.json", "weights.json"):
    try:
        rc = main(["analyze", os.path.join(root, case), "--out", os.path.join(root, "res"), "--cache-dir",
                   os.path.join(root, "cache"), "--analyses", "knn", "--no-progress", "--trust-code"])
    except SystemExit as e:
        rc = e.code
    out[case] = rc
print(json.dumps(out))
"""


def test_a_fifo_is_refused_before_anything_reads_it(tmp_path):
    """A FIFO given as arrays, checkpoint, spec or a spec's weights blocked the first read forever: each is one
    line naming it before it is opened (a real process, so that a regression times out instead of hanging)."""
    for name in ("arrays.npz", "model.safetensors", "spec.json", "fifo.pth"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "weights.json").write_text(json.dumps({"name": "w", "kind": "torchvision", "arch": "resnet18",
                                                       "weights": "fifo.pth", "dataset": "digits"}))
    proc = subprocess.run([sys.executable, "-c", _FIFO_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"arrays.npz": 2, "model.safetensors": 2,
                                                                "spec.json": 2, "weights.json": 2}, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4 and all("is a FIFO (named pipe), not a regular file" in line for line in lines), lines
    assert "fifo.pth" in lines[3]


def test_a_folder_that_is_not_a_save_pretrained_folder_is_refused_before_hashing(tmp_path, vit, capsys,
                                                                                   monkeypatch):
    """``"weights": "~"`` (a home directory), or a folder with a 16 GB file and no config.json, was hashed in full
    before the config check; now config.json is checked first, and only the files a load reads are hashed (never
    a stray large file beside them)."""
    import embedlab.external as external

    hashed: list[str] = []
    real = external.sha256_file
    monkeypatch.setattr(external, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    home = tmp_path / "home"
    home.mkdir()
    with open(home / "big.iso", "wb") as fh:  # sparse: no disk space
        fh.truncate(16 << 30)
    monkeypatch.setenv("HOME", str(home))
    line = _error(capsys, "analyze", _hf_spec(tmp_path, Path("~")), "--out", tmp_path / "r", "--analyses", "knn",
                  "--cache-dir", tmp_path / "c", "--no-progress")
    assert "not a save_pretrained folder" in line and hashed == [], (line, hashed)
    folder = tmp_path / "vit"
    shutil.copytree(vit, folder)
    with open(folder / "checkpoint-backup.bin", "wb") as fh:
        fh.truncate(16 << 30)
    rc, err = _outcome(capsys, "analyze", _hf_spec(tmp_path, folder), "--out", tmp_path / "r", "--analyses",
                       "accuracy", "--cache-dir", tmp_path / "c", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert sorted(hashed) == ["config.json", "model.safetensors", "preprocessor_config.json"], hashed


def _images(folder: Path, n: int = 3, size: tuple[int, int] = (8, 8), seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _image_tree(root: Path) -> Path:
    for split in ("train", "test"):
        for c in ("a", "b"):
            _images(root / split / c)
    return root


_WALK_SCRIPT = """
import sys
from embedlab.data import create_dataset
d = create_dataset("imagefolder", root=sys.argv[1], val_fraction=0.0)
print(len(d.split("train")), len(d.split("test")))
"""


def test_symbolic_link_loops_in_an_image_folder_are_walked_once(tmp_path):
    """Two ``x -> .`` links in a class folder made the walk run for minutes, then MemoryError: each folder is now
    walked once (links to other folders still followed), and a FIFO named like an image is skipped."""
    root = _image_tree(tmp_path / "imgs")
    for name in ("x", "y"):
        (root / "train" / "a" / name).symlink_to(".")
    elsewhere = tmp_path / "more"
    _images(elsewhere, n=2, seed=1)
    (root / "train" / "b" / "more").symlink_to(elsewhere)  # a linked folder of images: read
    os.mkfifo(root / "test" / "a" / "pipe.png")
    proc = subprocess.run([sys.executable, "-c", _WALK_SCRIPT, str(root)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["8", "6"]


def test_train_workers_is_range_checked(tmp_path, capsys):
    """``--workers 100000`` started launching 100,000 loader processes; now one line before anything starts."""
    from embedlab.config import max_workers

    line = _error(capsys, "train", "--workers", "100000", "--epochs", "1", "--out", tmp_path / "r", "--no-progress")
    assert f"num_workers (--workers) must be 0 .. {max_workers()}" in line and "100000" in line
    assert not (tmp_path / "r").exists()
    line = _error(capsys, "train", "--seed", str(2**64), "--epochs", "1", "--out", tmp_path / "r")
    assert "--seed" in line and "2**63 - 1" in line, line


# ============================================================================ 2. lying configs and weights: one line
def _weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    save_file(change(dict(state)), folder / "model.safetensors")


def _lying_header(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}" * 8)


def _deep(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "vit", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


HF_CASES = {
    "no tensors": (lambda f: _weights(f, lambda s: {"unrelated": torch.zeros(1)}), "has no tensor for"),
    "missing keys": (lambda f: _weights(f, lambda s: {k: v for k, v in s.items() if "layernorm" not in k}),
                     "has no tensor for"),
    "renamed keys": (lambda f: _weights(f, lambda s: {k.replace("vit.", "encoder."): v for k, v in s.items()}),
                     "has no tensor for"),
    "wrong shape": (lambda f: _weights(f, lambda s: {**s, "classifier.weight": torch.zeros(5, 32)}),
                    "cannot load the transformers image model"),
    "lying header": (_lying_header, "cannot read weights"),
    "string width": (lambda f: _edit_json(f / "config.json", hidden_size="16"), "cannot"),
    "deep config": (_deep, "nested too deeply"),
    "huge width": (lambda f: _edit_json(f / "config.json", hidden_size=2**20, intermediate_size=2**22),
                   "describes a model of"),
    "huge image": (lambda f: _edit_json(f / "config.json", image_size=2**20), "describes a model of"),
    "deep model": (lambda f: _edit_json(f / "config.json", num_hidden_layers=10**6), "at most 1000"),
    "processor size": (lambda f: _edit_json(f / "preprocessor_config.json", size={"height": "big", "width": 16}),
                       "preprocessor_config.json"),
    "processor huge size": (lambda f: _edit_json(f / "preprocessor_config.json", size={"height": 10**6,
                                                                                       "width": 10**6}),
                            "preprocessor_config.json"),
    "processor mean": (lambda f: _edit_json(f / "preprocessor_config.json", image_mean="abc"), "image_mean"),
    "processor std 0": (lambda f: _edit_json(f / "preprocessor_config.json", image_std=[0, 0, 0]), "image_std"),
    "config class": (lambda f: _edit_json(f / "config.json", architectures=["ViTConfig"]),
                     "not a transformers model class"),
    "processor class": (lambda f: _edit_json(f / "config.json", architectures=["ViTImageProcessor"]),
                        "not a transformers model class"),
    "quantized": (lambda f: _edit_json(f / "config.json", quantization_config={"quant_method": "bitsandbytes",
                                                                               "load_in_8bit": True}),
                  "quantiz"),
    "unknown model type": (lambda f: _edit_json(f / "config.json", model_type="no-such-model"), "cannot read"),
    "10**7 labels": (lambda f: _edit_json(f / "config.json", num_labels=10**7), "num_labels asks for 10,000,000"),
    "architectures int": (lambda f: _edit_json(f / "config.json", architectures=1), "architectures must be a list"),
    "flash attention": (lambda f: _edit_json(f / "config.json", attn_implementation="flash_attention_2"),
                        "embedlab runs eager or sdpa attention"),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_lying_hugging_face_configs_and_weights_are_one_line(tmp_path, vit, capsys, case):
    """Weights that miss tensors were analysed as a random network without a word (transformers' "newly
    initialized" log is silenced): now an error naming the keys; other lies were tracebacks or allocations."""
    change, message = HF_CASES[case]
    folder = tmp_path / "m"
    shutil.copytree(vit, folder)
    change(folder)
    line = _error(capsys, "analyze", _hf_spec(tmp_path, folder), "--out", tmp_path / "r", "--analyses", "accuracy",
                  "--cache-dir", tmp_path / "c", "--no-progress", "--device", "cpu")
    assert message in line, line
    assert not (tmp_path / "r" / "m").exists()


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "bfloat16", "no-such-dtype"])
def test_a_config_dtype_never_changes_what_is_computed(tmp_path, vit, capsys, dtype):
    """The model is read in float32 whatever config.json's dtype says (fp8 and unknown dtypes were tracebacks)."""
    folder = tmp_path / "m"
    shutil.copytree(vit, folder)
    _edit_json(folder / "config.json", dtype=dtype, torch_dtype=dtype)
    rc, err = _outcome(capsys, "analyze", _hf_spec(tmp_path, folder), "--out", tmp_path / "r", "--analyses",
                       "accuracy", "--cache-dir", tmp_path / "c", "--no-progress", "--device", "cpu")
    assert rc == 0 or (rc == 2 and len(err.strip().splitlines()) == 1), err
    if rc == 0:
        assert not err.strip(), err


# ============================================================================ 2. sentence-transformers folders
def _modules(folder: Path, entries) -> None:
    (folder / "modules.json").write_text(json.dumps(entries))


def _pickled_dense(folder: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    dense = folder / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"in_features": 16, "out_features": 4, "bias": True,
                                                   "activation_function": "torch.nn.modules.linear.Identity"}))
    torch.save({"linear.weight": Payload()}, dense / "pytorch_model.bin")
    entries = json.loads((folder / "modules.json").read_text())
    _modules(folder, [*entries, {"idx": 2, "name": "2", "path": "2_Dense",
                                 "type": "sentence_transformers.base.modules.dense.Dense"}])


def _no_tensors(folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({"unrelated": torch.zeros(1)}, folder / "model.safetensors")


ST_CASES = {
    "a function": (lambda f, m: _modules(f, [{"idx": 0, "name": "0", "path": "",
                                              "type": "sentence_transformers.util.cos_sim"}]),
                   "is not a sentence-transformers module class"),
    "a loss class": (lambda f, m: _modules(f, [{"idx": 0, "name": "0", "path": "",
                                                "type": "sentence_transformers.losses.CosineSimilarityLoss"}]),
                     "is not a sentence-transformers module class"),
    "an int": (lambda f, m: _modules(f, [{"idx": 0, "name": "0", "path": "", "type": 5}]), "modules.json: module 0"),
    "not a list": (lambda f, m: _modules(f, {"type": "x"}), "expected a non-empty list"),
    "normalize only": (lambda f, m: _modules(f, [{"idx": 0, "name": "0", "path": "",
                                                  "type": "sentence_transformers.models.Normalize"}]),
                       "the first module must be a transformer"),
    "pickled dense": (_pickled_dense, "cannot load the sentence-transformers model"),
    "max_seq_length": (lambda f, m: _edit_json(f / "sentence_bert_config.json", max_seq_length=10_000),
                       "max_seq_length 10000"),
    "no tensors": (lambda f, m: _no_tensors(f), "has no tensor for"),
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_broken_sentence_transformers_folders_are_one_line(tmp_path, encoder, capsys, case):
    change, message = ST_CASES[case]
    folder = tmp_path / "st"
    shutil.copytree(encoder, folder)
    marker = tmp_path / "ran"
    change(folder, marker)
    _write_texts(tmp_path / "texts", splits=(("test", 6),))
    line = _error(capsys, "analyze", _hf_spec(tmp_path, folder, dataset="text", data_root="texts"), "--out",
                  tmp_path / "r", "--analyses", "knn", "--cache-dir", tmp_path / "c", "--no-progress")
    assert message in line, line
    assert not marker.exists()


# ============================================================================ 2. text files
def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


TEXT_CASES = {
    "lone surrogate": (lambda d: (d / "test.jsonl").write_text('{"text": "a \\ud800 b", "label": "pos"}\n'),
                       "lone surrogate"),
    "surrogate label": (lambda d: (d / "test.jsonl").write_text('{"text": "a b", "label": "\\udfff"}\n'),
                        "lone surrogate"),
    "5000-digit label": (lambda d: (d / "test.jsonl").write_text('{"text": "a", "label": ' + "7" * 5000 + "}\n"),
                         "line 1"),
    "4000-digit label": (lambda d: (d / "test.jsonl").write_text('{"text": "a", "label": ' + "7" * 4000 + "}\n"),
                         "more than 1,000 digits"),
    "long csv label": (lambda d: (d / "test.csv").write_text("text,label\na," + "7" * 5000 + "\n"),
                       "5,000 characters long"),
    "huge sparse file": (lambda d: _sparse(d / "test.jsonl", 3 << 30), "GiB"),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_broken_text_files_are_one_line(tmp_path, encoder, capsys, case):
    change, message = TEXT_CASES[case]
    texts = tmp_path / "texts"
    texts.mkdir()
    change(texts)
    line = _error(capsys, "analyze", _hf_spec(tmp_path, encoder, dataset="text", data_root="texts"), "--out",
                  tmp_path / "r", "--analyses", "knn", "--cache-dir", tmp_path / "c", "--no-progress")
    assert message in line, line


# ============================================================================ 2. image folders
def test_a_decompression_bomb_in_an_image_folder_is_one_line(tmp_path, capsys):
    """A 20000×20000 PNG of a few kB was PIL's DecompressionBombError traceback: refused before it is decoded."""
    from PIL import Image

    root = _image_tree(tmp_path / "imgs")
    Image.new("1", (20000, 20000)).save(root / "train" / "a" / "bomb.png")
    line = _error(capsys, "train", "--dataset", "imagefolder", "--data-root", root, "--out", tmp_path / "r",
                  "--epochs", "1", "--no-progress")
    assert "bomb.png" in line and ("20000×20000" in line or "decompression" in line.lower()), line
    assert not (tmp_path / "r").exists()


def test_images_of_mixed_sizes_are_one_line_naming_image_size(tmp_path, capsys):
    root = _image_tree(tmp_path / "imgs")
    _images(root / "train" / "b", n=1, size=(10, 6), seed=3)  # replaces 0.png with a 10×6 image
    line = _error(capsys, "train", "--dataset", "imagefolder", "--data-root", root, "--out", tmp_path / "r",
                  "--epochs", "1", "--no-progress", "--set", "batch_size=4")
    assert "0.png: an image of 10×6 pixels" in line and "image_size=N" in line, line
    rc, err = _outcome(capsys, "train", "--dataset", "imagefolder", "--data-root", root, "--out", tmp_path / "r2",
                       "--epochs", "1", "--no-progress", "--set", "batch_size=4", "--data-opt", "image_size=8")
    assert rc == 0, err


@pytest.mark.parametrize("size", [0, -3, 10**6, "big"])
def test_imagefolder_image_size_out_of_range_is_one_line(tmp_path, capsys, size):
    root = _image_tree(tmp_path / "imgs")
    line = _error(capsys, "train", "--dataset", "imagefolder", "--data-root", root, "--out", tmp_path / "r",
                  "--epochs", "1", "--no-progress", "--data-opt", f"image_size={size}")
    assert "image_size" in line, line


def test_an_error_in_a_loader_process_is_still_one_line(tmp_path, capsys):
    """Raised in a DataLoader worker, an embedlab error came back wrapped with the worker's traceback (val/ is
    read only by the loader's processes: the training images are all read once for the statistics first)."""
    root = _image_tree(tmp_path / "imgs")
    for c in ("a", "b"):
        _images(root / "val" / c)
    _images(root / "val" / "b", n=1, size=(10, 6), seed=3)
    line = _error(capsys, "train", "--dataset", "imagefolder", "--data-root", root, "--out", tmp_path / "r",
                  "--epochs", "1", "--no-progress", "--set", "batch_size=4", "--workers", "1")
    assert line.startswith("embedlab: error: ") and "0.png: an image of 10×6 pixels" in line, line


# ============================================================================ 2. resource exhaustion
def _npz_with_header(path: Path, shape: tuple, extra: dict | None = None) -> None:
    """An .npz whose ``embeddings`` member has an .npy header claiming ``shape`` (float32) but no data."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("embeddings.npy", header.getvalue())
        for k, v in (extra or {}).items():
            buf = io.BytesIO()
            np.save(buf, v)
            z.writestr(f"{k}.npy", buf.getvalue())


def test_an_npz_header_asking_for_149_gb_is_refused_before_allocation(tmp_path):
    """A few hundred bytes whose header says (10**8, 400) float32 = 149 GB: one line in a real process under an
    8 GiB address-space limit (numpy would otherwise try to allocate it: MemoryError traceback)."""
    import resource

    _npz_with_header(tmp_path / "bomb.npz", (10**8, 400), {"labels": np.zeros(10**8 // 10**6, dtype=np.int64)})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(tmp_path / "bomb.npz"), "--out",
                           str(tmp_path / "r"), "--analyses", "knn"], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = _one_line(proc)
    assert "claims shape (100000000, 400)" in line and "149.0 GiB" in line, line


def test_report_arrays_with_a_lying_header_are_refused_before_allocation(tmp_path, capsys):
    from embedlab.reports.load import _load_arrays

    _npz_with_header(tmp_path / "arrays.npz", (10**8, 400), {"labels": np.zeros(4, dtype=np.int64)})
    with pytest.raises(EmbedlabError, match=r"array 'embeddings' claims shape \(100000000, 400\)"):
        _load_arrays(tmp_path / "arrays.npz")


def test_allocator_failures_anywhere_are_one_line_naming_what_to_lower(tmp_path, capsys, monkeypatch):
    """The generic guard: a MemoryError, or torch's allocator RuntimeError, that no bound caught first."""
    import embedlab.api as api

    for exc in (MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not "
                                            "enough memory: you tried to allocate 1099511627776 bytes.")):
        def boom(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(api, "train", boom)
        line = _error(capsys, "train", "--epochs", "1", "--out", tmp_path / "r")
        assert line.startswith("embedlab: error: out of memory: lower what you asked for (--batch-size") and \
            "width" in line, line
    monkeypatch.setattr(api, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a real bug")))
    with pytest.raises(RuntimeError, match="a real bug"):  # other RuntimeErrors are bugs: still a traceback
        main(["train", "--epochs", "1", "--out", str(tmp_path / "r")])


# ============================================================================ 2. exported programs, torchvision/timm
class _Returns(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.fc = kind, torch.nn.Linear(3, 10)

    def forward(self, x):
        logits = self.fc(x.mean((2, 3)))
        if self.kind == "dict":
            return {"logits": logits}
        return ((logits, logits),)


@pytest.mark.parametrize("kind, message", [("dict", "returns a dict (keys logits)"),
                                           ("nested", "returns tuple of tuple")])
def test_exported_programs_returning_a_dict_or_tuple_are_one_line(tmp_path, capsys, kind, message):
    x = torch.rand(2, 3, 8, 8)
    program = torch.export.export(_Returns(kind).eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    (tmp_path / "e.json").write_text(json.dumps({"name": "e", "kind": "export", "weights": "m.pt2",
                                                 "dataset": "digits", "embedding": "output:1"}))
    line = _error(capsys, "analyze", tmp_path / "e.json", "--trust-code", "--out", tmp_path / "r", "--analyses",
                  "accuracy", "--cache-dir", tmp_path / "c", "--no-progress", "--device", "cpu")
    assert message in line, line


@pytest.mark.parametrize("kind, arch, kwargs, message", [
    ("torchvision", "resnet18", {"num_classes": 10}, "factory_kwargs num_classes: embedlab sets this itself"),
    ("torchvision", "resnet18", {"weights": "IMAGENET1K_V1"}, "factory_kwargs weights"),
    ("torchvision", "resnet18", {"pretrained": True}, "factory_kwargs pretrained"),
    ("torchvision", "resnet18", {"no_such_option": 1}, "cannot build torchvision model 'resnet18'"),
    ("torchvision", "resnet9999", {}, "unknown torchvision model 'resnet9999'"),
    ("timm", "resnet18", {"pretrained": True}, "factory_kwargs pretrained"),
    ("timm", "no_such_net", {}, "unknown timm model 'no_such_net'"),
    ("timm", "resnet18", {"no_such_option": 1}, "cannot build timm model 'resnet18'"),
    ("torchvision", "resnet18", {"num_classes_in_spec": 10**9}, "num_classes must be 1 .. 100,000"),
])
def test_torchvision_and_timm_specs_with_bad_kwargs_are_one_line(tmp_path, capsys, kind, arch, kwargs, message):
    if kind == "timm":
        pytest.importorskip("timm")
    spec = {"name": "s", "kind": kind, "arch": arch, "dataset": "digits", "factory_kwargs": kwargs}
    if "num_classes_in_spec" in kwargs:  # a spec's own num_classes of 10**9: a 512e9-parameter head
        spec.update(num_classes=kwargs["num_classes_in_spec"], factory_kwargs={})
    (tmp_path / "s.json").write_text(json.dumps(spec))
    line = _error(capsys, "analyze", tmp_path / "s.json", "--out", tmp_path / "r", "--analyses", "accuracy",
                  "--cache-dir", tmp_path / "c", "--no-progress", "--device", "cpu")
    assert message in line, line


# ============================================================================ 2. and 4. the Python API
def _arrays(n: int = 40, d: int = 4):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % 2


def test_evaluate_reads_tensors_of_any_float_dtype_and_sparse_arrays(tmp_path):
    import embedlab

    z, y = _arrays()
    expected = embedlab.evaluate(embeddings=z, labels=y, analyses="knn,align_uniform").metrics
    for given in (torch.from_numpy(z).to(torch.bfloat16), torch.from_numpy(z).half(), torch.from_numpy(z).to_sparse()):
        got = embedlab.evaluate(embeddings=given, labels=torch.from_numpy(y), analyses="knn,align_uniform").metrics
        tol = 0 if given.dtype == torch.float32 else 0.05
        assert set(got) == set(expected) and all(abs(got[k] - expected[k]) <= tol for k in got), (given.dtype, got)


@pytest.mark.parametrize("kwargs, message", [
    ({"embeddings": torch.zeros(40, 4, device="meta")}, "meta device holds no values"),
    ({"embeddings": [[0.0, 1.0], [1.0]]}, "not a rectangular array"),
    ({"embeddings": np.array([[0.0, None]] * 40, dtype=object)}, "Python objects"),
    ({"settings": 5}, "settings must be {analysis: {key: value}}"),
    ({"settings": {"knn": 5}}, "settings must be"),
    ({"analyses": 5}, "analyses must be 'all'"),
    ({"source": 5, "embeddings": None, "labels": None}, "source must be a path"),
])
def test_evaluate_given_odd_arguments_says_what_is_wrong(kwargs, message):
    import embedlab

    z, y = _arrays()
    args = {"embeddings": z, "labels": y, "analyses": "knn", **kwargs}
    with pytest.raises(EmbedlabError, match=message.replace("{", "\\{").replace("}", "\\}")):
        embedlab.evaluate(**args)


class _TupleNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


def test_evaluate_of_a_module_returning_a_tuple_or_on_meta_is_one_line():
    import embedlab

    with pytest.raises(EmbedlabError, match="returns tuple, not a tensor of logits"):
        embedlab.evaluate(_TupleNet(), dataset="digits", analyses="accuracy")
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(EmbedlabError, match="meta device"):
        embedlab.evaluate(meta, dataset="digits", analyses="accuracy")


def test_evaluate_leaves_the_callers_module_as_it_was():
    """evaluate(module) analyses it in eval mode on the device asked for: afterwards every submodule has its
    training flag back (and its device: checked on CPU where no GPU is, the mode alone)."""
    import embedlab

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Dropout(0.5),
                              torch.nn.Linear(32, 10))
    net.train()
    net[2].eval()  # a mixed state, kept as it is
    before = [m.training for m in net.modules()]
    embedlab.evaluate(net, dataset="digits", analyses="accuracy,robustness", settings={
        "robustness": {"max_examples": 8}}, device="cpu")
    assert [m.training for m in net.modules()] == before
    if torch.cuda.is_available():
        embedlab.evaluate(net, dataset="digits", analyses="accuracy", device="cuda")
        assert all(p.device.type == "cpu" for p in net.parameters())


# ============================================================================ 4. noise and names
def test_a_failing_pt2_load_is_one_line_without_torchs_logged_traceback(tmp_path):
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    (tmp_path / "e.json").write_text(json.dumps({"name": "e", "kind": "export", "weights": "bad.pt2",
                                                 "dataset": "digits"}))
    proc = _cli("analyze", "e.json", "--trust-code", "--out", "r", "--no-progress", cwd=tmp_path)
    assert "cannot load exported program bad.pt2" in _one_line(proc)


def test_a_cache_dir_that_is_a_file_is_named_as_given(tmp_path, capsys):
    """The error named the cache's hidden ``.KEY.partial-PID`` folder inside it, not the path the user gave."""
    from tests.test_hostile_input import _checkpoint

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    (tmp_path / "cachefile").write_text("x")
    line = _error(capsys, "analyze", ckpt, "--out", tmp_path / "r", "--analyses", "knn", "--cache-dir",
                  tmp_path / "cachefile", "--no-progress", "--device", "cpu")
    assert line == f"embedlab: error: {tmp_path / 'cachefile'}: Not a directory", line


# ============================================================================ 2. sizes bounded before allocation
@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "cnn-gap", "--model-opt", "width=100000"], "lower its width or depth options"),
    (["train", "--model", "mlp", "--model-opt", "hidden=1000000,1000000"], "lower its width or depth options"),
    (["train", "--method", "multimix", "--method-opt", "n=1000000000"], "option n: at most 100,000"),
    (["analyze", "ARRAYS", "--analyses", "calibration", "--opt", "calibration.n_bins=1000000000"], "n_bins"),
    (["study", "toy-depth", "--realisations", "100000000"], "--realisations"),
    (["study", "toy-depth", "--n-train", "10000000000"], "--n-train"),
    (["study", "toy-depth", "--ks", "2,a"], "--ks"),
    (["study", "toy-depth", "--ks", "2,100000"], "--ks"),
])
def test_sizes_are_bounded_before_anything_is_allocated(tmp_path, capsys, argv, message):
    """A real process under an 8 GiB address-space limit would be killed or fail in the allocator: each of these
    is refused by its option's range before the work starts."""
    z, y = _arrays()
    np.savez(tmp_path / "a.npz", embeddings=z, labels=y, logits=np.random.default_rng(0).normal(size=(40, 2)))
    argv = [str(tmp_path / "a.npz") if a == "ARRAYS" else a for a in argv]
    line = _error(capsys, *argv, "--out", tmp_path / "o", *(["--no-progress"] if argv[0] != "study" else []))
    assert message in line, line
    assert not (tmp_path / "o").exists() or argv[0] == "analyze"


# ============================================================================ 5. fuzz: success or one line, status 2
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _success_or_one_line(capsys, *argv) -> None:
    rc, err = _outcome(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 0 or (rc == 2 and len(lines) == 1 and lines[0].startswith("embedlab: error: ")), (rc, err)
    assert "out of memory" not in err, err  # sizes from files are bounded before anything is allocated


_json_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**7), st.sampled_from([2**40, 0.5, -1e300]),
                         st.text(max_size=6), st.lists(st.one_of(st.integers(-1, 40), st.text(max_size=3)),
                                                       max_size=3),
                         st.dictionaries(st.sampled_from(["height", "width", "shortest_edge", "x"]),
                                         st.one_of(st.integers(-1, 10**6), st.text(max_size=3)), max_size=2))
_FUZZ = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture
def memory_limited():
    """The address space of this process limited to what it maps now plus 6 GiB while a fuzz test runs: a
    generated input that allocates without bound then ends in the generic out-of-memory line, which the fuzz
    tests do not accept (every size is bounded before allocation), instead of waking the OOM killer."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + (6 << 30)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@_FUZZ
@given(key=st.sampled_from(["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                            "image_size", "patch_size", "num_channels", "num_labels", "architectures", "model_type",
                            "dtype", "layer_norm_eps", "hidden_act", "id2label", "qkv_bias"]),
       value=_json_values)
def test_fuzz_generated_hugging_face_configs(tmp_path_factory, vit, capsys, memory_limited, key, value):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(vit, root / "m")
    _edit_json(root / "m" / "config.json", **{key: value})
    _success_or_one_line(capsys, "analyze", _hf_spec(root, root / "m"), "--out", root / "r", "--analyses",
                         "accuracy", "--cache-dir", root / "c", "--no-progress", "--device", "cpu")


@_FUZZ
@given(key=st.sampled_from(["size", "crop_size", "do_resize", "do_center_crop", "do_normalize", "image_mean",
                            "image_std", "resample", "image_processor_type", "rescale_factor"]),
       value=_json_values)
def test_fuzz_generated_image_processor_configs(tmp_path_factory, vit, capsys, memory_limited, key, value):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(vit, root / "m")
    _edit_json(root / "m" / "preprocessor_config.json", **{key: value})
    _success_or_one_line(capsys, "analyze", _hf_spec(root, root / "m"), "--out", root / "r", "--analyses",
                         "accuracy", "--cache-dir", root / "c", "--no-progress", "--device", "cpu")


_MODULE_TYPES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                 "sentence_transformers.models.Normalize", "sentence_transformers.models.Dense",
                 "sentence_transformers.util.cos_sim", "sentence_transformers.losses.MSELoss", "os.system",
                 "sentence_transformers.nope.Nope", "", "builtins.int"]


@_FUZZ
@given(entries=st.one_of(
    _json_values,
    st.lists(st.fixed_dictionaries({"idx": st.integers(0, 2), "name": st.sampled_from(["0", "1"]),
                                    "path": st.sampled_from(["", "1_Pooling", "../..", "/tmp", "nope"]),
                                    "type": st.one_of(st.sampled_from(_MODULE_TYPES), _json_values)}),
             max_size=3)))
def test_fuzz_generated_modules_json(tmp_path_factory, encoder, capsys, memory_limited, entries):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(encoder, root / "st")
    _modules(root / "st", entries)
    _write_texts(root / "texts", splits=(("test", 6),))
    _success_or_one_line(capsys, "analyze", _hf_spec(root, root / "st", dataset="text", data_root="texts"),
                         "--out", root / "r", "--analyses", "knn", "--cache-dir", root / "c", "--no-progress")


_row = st.one_of(
    st.fixed_dictionaries({"text": st.one_of(st.text(max_size=8), _json_values),
                           "label": st.one_of(st.sampled_from(["pos", "neg", "", "\ud800"]), _json_values)}),
    _json_values)


@_FUZZ
@given(rows=st.lists(_row, max_size=8), suffix=st.sampled_from([".jsonl", ".csv", ".tsv"]),
       junk=st.one_of(st.none(), st.binary(max_size=20), st.sampled_from(["\ud800", "{" * 5000, "7" * 5000])))
def test_fuzz_generated_text_files(tmp_path_factory, encoder, capsys, memory_limited, rows, suffix, junk):
    root = tmp_path_factory.mktemp("fuzz")
    texts = root / "texts"
    texts.mkdir()
    if suffix == ".jsonl":
        body = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "," if suffix == ".csv" else "\t"
        body = f"text{sep}label\n" + "".join(
            f"{r.get('text')}{sep}{r.get('label')}\n" if isinstance(r, dict) else f"{r}\n" for r in rows)
    data = body.encode("utf-8", "surrogatepass")
    if junk is not None:
        data += junk if isinstance(junk, bytes) else junk.encode("utf-8", "surrogatepass")
    (texts / f"test{suffix}").write_bytes(data)
    _success_or_one_line(capsys, "analyze", _hf_spec(root, encoder, dataset="text", data_root="texts"), "--out",
                         root / "r", "--analyses", "knn", "--cache-dir", root / "c", "--no-progress")


@_FUZZ
@given(classes=st.integers(0, 3), per_class=st.integers(0, 3), sizes=st.lists(st.integers(1, 24), min_size=1,
                                                                              max_size=3),
       extra=st.sampled_from(["none", "empty png", "truncated png", "text as png", "loop", "fifo", "deep"]),
       image_size=st.sampled_from([None, 0, 8, 5000]))
def test_fuzz_generated_image_folders(tmp_path_factory, capsys, memory_limited, classes, per_class, sizes, extra,
                                      image_size):
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz") / "imgs"
    rng = np.random.default_rng(classes * 16 + per_class)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for c in range(classes):
            (root / split / f"c{c}").mkdir()
            for i in range(per_class):
                s = sizes[(c + i) % len(sizes)]
                Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    target = root / "train" / "c0"
    if classes and extra != "none":
        if extra == "empty png":
            (target / "e.png").write_bytes(b"")
        elif extra == "truncated png":
            good = next(target.glob("*.png"), None)
            (target / "t.png").write_bytes(good.read_bytes()[:40] if good else b"\x89PNG")
        elif extra == "text as png":
            (target / "x.png").write_text("not an image")
        elif extra == "loop":
            (target / "x").symlink_to(".")
            (target / "y").symlink_to(".")
        elif extra == "fifo":
            os.mkfifo(target / "p.png")
        else:
            deep = target
            for _ in range(30):
                deep = deep / "d"
            deep.mkdir(parents=True)
    opts = ["--data-opt", f"image_size={image_size}"] if image_size is not None else []
    _success_or_one_line(capsys, "train", "--dataset", "imagefolder", "--data-root", root, *opts, "--out",
                         root.parent / "r", "--epochs", "1", "--set", "batch_size=2", "--no-progress",
                         "--device", "cpu")


def test_evaluate_with_out_naming_a_file_names_it(tmp_path):
    import embedlab

    z, y = _arrays()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError) as e:
        embedlab.evaluate(embeddings=z, labels=y, analyses="knn", out=tmp_path / "f")
    assert e.value.filename == str(tmp_path / "f") and "Not a directory" in str(e.value)
