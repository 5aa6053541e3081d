"""Load saved analysis results (``results.json`` + ``arrays.npz``) written by the analysis layer."""
from __future__ import annotations

import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from embedlab.errors import EmbedlabError

RESULTS_FILENAME = "results.json"
RESULTS_KIND = "embedlab.analysis"
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


@dataclass(frozen=True, eq=False)
class ModelResult:
    """One model's analysis results: the parsed ``results.json`` plus its test-set arrays."""

    name: str
    results: dict[str, Any]
    embeddings: np.ndarray  # (N, d) float32
    labels: np.ndarray  # (N,) int64
    path: Path  # the results.json file
    logits: np.ndarray | None = field(default=None, repr=False)  # (N, C) when saved

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``results["metrics"]``: metric name -> {"value", "higher_is_better", "analysis", "settings", ...}."""
        return self.results.get("metrics") or {}

    @property
    def meta(self) -> dict[str, Any]:
        """The training run's metadata (``results["model"]["meta"]``), ``{}`` when absent."""
        meta = (self.results.get("model") or {}).get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def dataset(self) -> dict[str, Any]:
        """``results["dataset"]``, ``{}`` when absent."""
        ds = self.results.get("dataset")
        return ds if isinstance(ds, dict) else {}

    @property
    def class_names(self) -> list[str]:
        """Class names indexed by label; falls back to ``str(label)`` when the results do not list them."""
        classes = self.dataset.get("classes")
        if isinstance(classes, list) and classes:
            return [str(c) for c in classes]
        n = int(self.labels.max()) + 1 if self.labels.size else 0
        return [str(i) for i in range(n)]


def load_results(paths: Iterable[str | os.PathLike[str]]) -> list[ModelResult]:
    """Load every results set found under ``paths``, in the order given.

    Each path may be a results directory, a ``results.json`` file, or a parent directory whose immediate
    subdirectories (sorted by name) are results directories. The same file reached twice is loaded once.
    Models sharing a name are disambiguated by appending their results directory name, e.g. ``"mixup (seed1)"``.
    Raises :class:`EmbedlabError` with a one-line message naming the offending path on any problem.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for f in _find_results_files(Path(p)):
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        raise EmbedlabError("no results paths given")
    loaded = [_load_one(f) for f in files]
    return _disambiguate(loaded)


def _find_results_files(path: Path) -> list[Path]:
    if not path.exists():
        raise EmbedlabError(f"results path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise EmbedlabError(f"not a results JSON file: {path} (expected a {RESULTS_FILENAME} or a directory)")
        return [path]
    direct = path / RESULTS_FILENAME
    if direct.is_file():
        return [direct]
    found = sorted(
        (sub / RESULTS_FILENAME for sub in path.iterdir() if sub.is_dir() and (sub / RESULTS_FILENAME).is_file()),
        key=lambda f: f.parent.name,
    )
    if not found:
        raise EmbedlabError(f"no {RESULTS_FILENAME} found in {path} or its immediate subdirectories")
    return found


def _load_one(json_path: Path) -> ModelResult:
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EmbedlabError(f"cannot read results file {json_path}: {_one_line(e)}") from e
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise EmbedlabError(f"invalid JSON in {json_path}: {e.msg} (line {e.lineno}, column {e.colno})") from e
    if not isinstance(results, dict):
        raise EmbedlabError(f"invalid results file {json_path}: top level must be a JSON object")
    kind = results.get("kind")
    if kind != RESULTS_KIND:
        raise EmbedlabError(f"{json_path} is not an embedlab analysis result (kind={kind!r}, expected {RESULTS_KIND!r})")
    version = results.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EmbedlabError(
            f"unsupported schema_version {version!r} in {json_path} "
            f"(this embedlab reads {', '.join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))})"
        )
    for key in ("model", "dataset", "metrics"):
        if key in results and results[key] is not None and not isinstance(results[key], dict):
            raise EmbedlabError(f"invalid results file {json_path}: {key!r} must be a JSON object")

    arrays_name = results.get("arrays") or "arrays.npz"
    if not isinstance(arrays_name, str):
        raise EmbedlabError(f"invalid results file {json_path}: 'arrays' must be a file name")
    embeddings, labels, logits = _load_arrays(json_path.parent / arrays_name)

    classes = (results.get("dataset") or {}).get("classes")
    if isinstance(classes, list) and classes and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(classes):
            raise EmbedlabError(
                f"labels in {json_path.parent / arrays_name} range over [{lo}, {hi}] "
                f"but {json_path} lists {len(classes)} classes"
            )

    name = (results.get("model") or {}).get("name")
    if not isinstance(name, str) or not name.strip():
        name = json_path.parent.name
    return ModelResult(name=name, results=results, embeddings=embeddings, labels=labels, path=json_path, logits=logits)


def _load_arrays(npz_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not npz_path.is_file():
        raise EmbedlabError(f"arrays file missing: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            missing = [k for k in ("embeddings", "labels") if k not in npz.files]
            if missing:
                raise EmbedlabError(f"arrays file {npz_path} lacks {', '.join(missing)}")
            embeddings = npz["embeddings"]
            labels = npz["labels"]
            logits = npz["logits"] if "logits" in npz.files else None
    except EmbedlabError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise EmbedlabError(f"cannot read arrays file {npz_path}: {_one_line(e)}") from e

    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.number):
        raise EmbedlabError(f"embeddings in {npz_path} must be a numeric (N, d) array, got {embeddings.dtype} {embeddings.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise EmbedlabError(f"labels in {npz_path} must be an integer (N,) array, got {labels.dtype} {labels.shape}")
    if len(embeddings) != len(labels):
        raise EmbedlabError(
            f"length mismatch in {npz_path}: {len(embeddings)} embeddings but {len(labels)} labels"
        )
    if logits is not None and (logits.ndim != 2 or len(logits) != len(labels)):
        raise EmbedlabError(f"logits in {npz_path} must be (N, C) with N={len(labels)}, got {logits.shape}")
    return (
        np.ascontiguousarray(embeddings, dtype=np.float32),
        labels.astype(np.int64, copy=False),
        None if logits is None else np.ascontiguousarray(logits, dtype=np.float32),
    )


def _disambiguate(loaded: list[ModelResult]) -> list[ModelResult]:
    """Rename models whose names collide: append the results dir name, then more of the path, then a counter."""
    counts = Counter(m.name for m in loaded)
    if all(c == 1 for c in counts.values()):
        return loaded
    taken = {m.name for m in loaded if counts[m.name] == 1}
    out: list[ModelResult] = []
    for m in loaded:
        if counts[m.name] == 1:
            out.append(m)
            continue
        parents = m.path.resolve().parent.parts
        candidates = [f"{m.name} ({'/'.join(parents[-depth:])})" for depth in (1, 2, 3) if depth <= len(parents)]
        new = next((c for c in candidates if c not in taken), None)
        if new is None:
            i = 2
            while f"{m.name} #{i}" in taken:
                i += 1
            new = f"{m.name} #{i}"
        taken.add(new)
        out.append(ModelResult(new, m.results, m.embeddings, m.labels, m.path, m.logits))
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
