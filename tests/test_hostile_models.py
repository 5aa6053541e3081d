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
from tests.test_text import _write_texts, encoder  # noqa: F401 - the fixture: a tiny sentence-transformers folder

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers", reason="the huggingface kind needs embedlab[hf] (transformers)")


def _outcome(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _error(capsys, *argv) -> str:
    rc, err = _outcome(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


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


@pytest.mark.slow  # three real processes importing transformers, about 8 s each
@pytest.mark.parametrize("config, hook", [
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
