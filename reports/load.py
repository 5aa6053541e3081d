"""Load saved analysis results (``results.json`` + ``arrays.npz``) and study results written by the other layers.

Two kinds of input are read:

* analysis results: ``results.json`` (``"kind": "embedlab.analysis"``) beside its ``arrays.npz``, one per model,
  schema version 2 (docs/RESULTS_FORMAT.md); version-1 files are upgraded on load by :func:`upgrade_v1`;
* study results (:class:`StudyResult`): ``toy_depth.json`` written by ``trainers/studies/toy_depth.py``, or any JSON
  file with ``"kind": "embedlab.study"``, with the PNG figures it names beside it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from embedlab.config import MAX_CLASSES
from embedlab.errors import EmbedlabError
from embedlab.io import check_npz_sizes

RESULTS_FILENAME = "results.json"
RESULTS_KIND = "embedlab.analysis"
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
SCHEMA_VERSION = 2  # what a loaded ModelResult holds (version 1 is upgraded)
STUDY_KIND = "embedlab.study"
STUDY_FILENAMES = ("toy_depth.json", "confmix.json", "benchmark.json")  # study files recognised by name inside a directory
THUMBNAIL_CHANNELS = (1, 3, 4)
MAX_FIGURE_BYTES = 8 << 20  # a study figure larger than this is not embedded


@dataclass(frozen=True, eq=False)
class ModelResult:
    """One model's analysis results: the parsed ``results.json`` plus its test-set arrays."""

    name: str
    results: dict[str, Any]
    embeddings: np.ndarray  # (N, d) float32
    labels: np.ndarray  # (N,) int64
    path: Path  # the results.json file
    logits: np.ndarray | None = field(default=None, repr=False)  # (N, C) when saved
    thumbnails: np.ndarray | None = field(default=None, repr=False)  # (n, h, w, C) uint8, image datasets only
    thumbnail_index: np.ndarray | None = field(default=None, repr=False)  # (n,) int64: rows of ``embeddings``

    @property
    def edited(self) -> bool:
        """True when results.json was changed after embedlab wrote it (its recorded digest does not match)."""
        from embedlab.io import digest_ok

        return digest_ok(self.results) is False

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
    def sections(self) -> dict[str, dict[str, str]]:
        """``results["sections"]``: section id -> {"title", "note"} (strings; malformed entries left out)."""
        sections = self.results.get("sections")
        if not isinstance(sections, dict):
            return {}
        out = {}
        for key, sec in sections.items():
            if isinstance(sec, dict):
                out[str(key)] = {k: str(sec[k]) for k in ("title", "note") if isinstance(sec.get(k), (str, int, float))}
        return out

    @property
    def plots(self) -> dict[str, Any]:
        """``results["plots"]``: analysis name -> its plot (a dict with a ``"kind"``), ``{}`` when absent."""
        plots = self.results.get("plots")
        return plots if isinstance(plots, dict) else {}

    @property
    def skipped(self) -> dict[str, str]:
        """``results["skipped"]``: analysis name -> why it did not run."""
        skipped = self.results.get("skipped")
        return {str(k): str(v) for k, v in skipped.items()} if isinstance(skipped, dict) else {}

    @property
    def label_noise(self) -> dict[str, Any] | None:
        """The training labels' noise (``results["dataset"]["label_noise"]``, else the checkpoint's
        ``meta["dataset"]["label_noise"]``): fraction, kind, seed, flipped_fraction, …; None without label noise."""
        noise = self.dataset.get("label_noise")
        if not isinstance(noise, dict):
            ds = self.meta.get("dataset")
            noise = ds.get("label_noise") if isinstance(ds, dict) else None
        return noise if isinstance(noise, dict) else None

    @property
    def config(self) -> dict[str, Any]:
        """The training config saved in the checkpoint metadata, ``{}`` when absent."""
        config = self.meta.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def seed(self) -> int | None:
        """The training seed (``meta.config.seed``), None when unknown."""
        seed = self.config.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def class_names(self) -> list[str]:
        """Class names indexed by label; falls back to ``str(label)`` when the results do not list them."""
        classes = self.dataset.get("classes")
        if isinstance(classes, list) and classes:
            return [str(c) for c in classes]
        n = int(self.labels.max()) + 1 if self.labels.size else 0
        return [str(i) for i in range(n)]


@dataclass(frozen=True, eq=False)
class StudyResult:
    """One study result file (e.g. seed 002's toy-depth study): its JSON and the figures found beside it."""

    name: str  # "toy_depth", or the file's "study" / stem
    path: Path
    data: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)  # figure name -> existing PNG file

    @property
    def summary(self) -> dict[str, Any]:
        summary = self.data.get("summary")
        return summary if isinstance(summary, dict) else {}


@dataclass(frozen=True)
class ReportInputs:
    """Everything a report reads: analysis results (one per model) and study results."""

    results: list[ModelResult]
    studies: list[StudyResult]


def load_results(paths: Iterable[str | os.PathLike[str]]) -> list[ModelResult]:
    """Load every analysis results set found under ``paths``, in the order given.

    Each path may be a results directory, a ``results.json`` file, or a parent directory whose immediate
    subdirectories (sorted by name) are results directories. The same file reached twice is loaded once.
    Models sharing a name are disambiguated by appending their results directory name, e.g. ``"mixup (seed1)"``.
    Study files among ``paths`` are ignored here (see :func:`load_report_inputs`).
    Raises :class:`EmbedlabError` with a one-line message naming the offending path on any problem.
    """
    files, _ = find_inputs(paths)
    if not files:
        raise EmbedlabError(f"no {RESULTS_FILENAME} found in the results paths given")
    return _disambiguate([_load_one(f) for f in files])


def load_report_inputs(paths: Iterable[str | os.PathLike[str]]) -> ReportInputs:
    """Analysis results and study results under ``paths``: as :func:`load_results`, and a directory (or one of a
    parent's immediate subdirectories) may also hold a study file such as ``toy_depth.json``, or a path may name a
    study JSON file. Raises when neither kind is found."""
    files, study_files = find_inputs(paths)
    if not files and not study_files:
        raise EmbedlabError(f"no {RESULTS_FILENAME} or study results found in the paths given")
    return ReportInputs(_disambiguate([_load_one(f) for f in files]), [load_study(f) for f in study_files])


def find_inputs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """``(results files, study files)`` under ``paths``, each in the order found, each file once."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise EmbedlabError("no results paths given")
    files: list[Path] = []
    studies: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        found, found_studies = _find_in(Path(p))
        for f, into in [(f, files) for f in found] + [(f, studies) for f in found_studies]:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                into.append(f)
    return files, studies


def _is_study_file(path: Path) -> bool:
    if path.name in STUDY_FILENAMES:
        return True
    if path.name == RESULTS_FILENAME:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False  # _load_one reports the problem with the file's name
    return isinstance(data, dict) and data.get("kind") == STUDY_KIND


def _study_files_in(directory: Path) -> list[Path]:
    return [directory / n for n in STUDY_FILENAMES if (directory / n).is_file()]


def _find_in(path: Path) -> tuple[list[Path], list[Path]]:
    if not path.exists():
        raise EmbedlabError(f"results path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise EmbedlabError(f"not a results JSON file: {path} (expected a {RESULTS_FILENAME} or a directory)")
        return ([], [path]) if _is_study_file(path) else ([path], [])
    direct = path / RESULTS_FILENAME
    studies = _study_files_in(path)
    if direct.is_file() or studies:
        return ([direct] if direct.is_file() else []), studies
    subdirs = sorted((sub for sub in path.iterdir() if sub.is_dir()), key=lambda d: d.name)
    found = [sub / RESULTS_FILENAME for sub in subdirs if (sub / RESULTS_FILENAME).is_file()]
    found_studies = [f for sub in subdirs for f in _study_files_in(sub)]
    if not found and not found_studies:
        raise EmbedlabError(f"no {RESULTS_FILENAME} or study file ({', '.join(STUDY_FILENAMES)}) found in {path} "
                            "or its immediate subdirectories")
    return found, found_studies


def _read_json_object(json_path: Path) -> dict[str, Any]:
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EmbedlabError(f"cannot read results file {json_path}: {_one_line(e)}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EmbedlabError(f"invalid JSON in {json_path}: {e.msg} (line {e.lineno}, column {e.colno})") from e
    except RecursionError:  # hundreds of thousands of nested brackets: no results file looks like that
        raise EmbedlabError(f"invalid JSON in {json_path}: nested too deeply to read") from None
    if not isinstance(data, dict):
        raise EmbedlabError(f"invalid results file {json_path}: top level must be a JSON object")
    return data


def _load_one(json_path: Path) -> ModelResult:
    results = _read_json_object(json_path)
    kind = results.get("kind")
    if kind != RESULTS_KIND:
        raise EmbedlabError(f"{json_path} is not an embedlab analysis result (kind={kind!r}, expected {RESULTS_KIND!r})")
    version = results.get("schema_version")
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EmbedlabError(
            f"unsupported schema_version {version!r} in {json_path} "
            f"(this embedlab reads {', '.join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))})"
        )
    for key in ("model", "dataset", "metrics", "plots", "skipped", "sections"):
        if key in results and results[key] is not None and not isinstance(results[key], dict):
            raise EmbedlabError(f"invalid results file {json_path}: {key!r} must be a JSON object")
    if version == 1:
        try:
            results = upgrade_v1(results)
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:  # a guard: upgrade_v1 is total
            raise EmbedlabError(f"cannot upgrade schema version 1 results file {json_path}: {_one_line(e)}") from e

    arrays_name = results.get("arrays") or "arrays.npz"
    if not isinstance(arrays_name, str):
        raise EmbedlabError(f"invalid results file {json_path}: 'arrays' must be a file name")
    arrays = _load_arrays(json_path.parent / arrays_name)
    expected = results.get("arrays_sha256")
    if expected is not None:  # results.json names the arrays written with it: a pair from two runs is refused
        from embedlab.io import sha256_file

        try:
            actual = sha256_file(json_path.parent / arrays_name)
        except OSError as e:
            raise EmbedlabError(f"cannot read {json_path.parent / arrays_name}: {e.strerror or e}") from None
        if actual != expected:
            raise EmbedlabError(f"{json_path.parent / arrays_name} does not belong to {json_path} (its SHA-256 "
                                f"differs from the one recorded there: the two files come from different analyses, "
                                f"e.g. one interrupted write); run embedlab analyze again for this model")
    labels = arrays["labels"]

    classes = (results.get("dataset") or {}).get("classes")
    if isinstance(classes, list) and classes and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(classes):
            raise EmbedlabError(
                f"labels in {json_path.parent / arrays_name} range over [{lo}, {hi}] "
                f"but {json_path} lists {len(classes)} classes"
            )
    elif labels.size:
        # no class names: the class count is derived from the labels, and bounded before names are built for it
        lo, hi = int(labels.min()), int(labels.max())
        logit_cols = 0 if arrays["logits"] is None else arrays["logits"].shape[1]
        if lo < 0 or hi >= min(MAX_CLASSES, max(len(labels), logit_cols)):
            raise EmbedlabError(
                f"labels in {json_path.parent / arrays_name} range over [{lo}, {hi}], which are not class indices "
                f"0 .. C-1 for {len(labels)} examples ({json_path} lists no class names)"
            )
    if isinstance(classes, list) and len(classes) > MAX_CLASSES:
        raise EmbedlabError(f"invalid results file {json_path}: {len(classes)} classes; embedlab reads at most "
                            f"{MAX_CLASSES}")

    name = (results.get("model") or {}).get("name")
    if not isinstance(name, str) or not name.strip():
        name = json_path.parent.name
    return ModelResult(name=name, results=results, path=json_path, **arrays)


def _load_arrays(npz_path: Path) -> dict[str, Any]:
    """``embeddings``, ``labels``, ``logits``, ``thumbnails``, ``thumbnail_index`` (the last three may be None),
    validated. The other arrays in the file (per-analysis data) are not read."""
    if not npz_path.is_file():
        raise EmbedlabError(f"arrays file missing: {npz_path}")
    check_npz_sizes(npz_path, "arrays file", {"embeddings", "labels", "logits", "thumbnails", "thumbnail_index"})
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            missing = [k for k in ("embeddings", "labels") if k not in npz.files]
            if missing:
                raise EmbedlabError(f"arrays file {npz_path} lacks {', '.join(missing)}")
            embeddings = npz["embeddings"]
            labels = npz["labels"]
            logits = npz["logits"] if "logits" in npz.files else None
            has_thumbs = "thumbnails" in npz.files and "thumbnail_index" in npz.files
            thumbnails = npz["thumbnails"] if has_thumbs else None
            thumbnail_index = npz["thumbnail_index"] if has_thumbs else None
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
    if thumbnails is not None and thumbnail_index is not None:
        if thumbnails.ndim == 3:  # (n, h, w) grayscale
            thumbnails = thumbnails[..., None]
        if (thumbnails.dtype != np.uint8 or thumbnails.ndim != 4 or thumbnails.shape[-1] not in THUMBNAIL_CHANNELS
                or 0 in thumbnails.shape[1:3]):
            raise EmbedlabError(f"thumbnails in {npz_path} must be uint8 (n, h, w, C) with h, w > 0 and C in 1, 3 "
                                f"or 4, got {thumbnails.dtype} {thumbnails.shape}")
        if (thumbnail_index.ndim != 1 or not np.issubdtype(thumbnail_index.dtype, np.integer)
                or len(thumbnail_index) != len(thumbnails)):
            raise EmbedlabError(f"thumbnail_index in {npz_path} must be an integer (n,) array with n = "
                                f"{len(thumbnails)} thumbnails, got {thumbnail_index.dtype} {thumbnail_index.shape}")
        if thumbnail_index.size and (thumbnail_index.min() < 0 or thumbnail_index.max() >= len(labels)):
            raise EmbedlabError(f"thumbnail_index in {npz_path} must index the {len(labels)} embeddings, "
                                f"got values in [{thumbnail_index.min()}, {thumbnail_index.max()}]")
    return {
        "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32),
        "labels": labels.astype(np.int64, copy=False),
        "logits": None if logits is None else np.ascontiguousarray(logits, dtype=np.float32),
        "thumbnails": thumbnails,
        "thumbnail_index": None if thumbnail_index is None else thumbnail_index.astype(np.int64, copy=False),
    }


def load_study(json_path: Path) -> StudyResult:
    """Read one study file. Its figures are the PNG files it names under ``"figures"`` (``{name: file}``, relative
    to the file's folder), or, when it names none, every ``*.png`` beside it; missing or oversized files are left out."""
    data = _read_json_object(json_path)
    kind = data.get("kind")
    if kind is not None and kind != STUDY_KIND:
        raise EmbedlabError(f"{json_path} is not an embedlab study result (kind={kind!r}, expected {STUDY_KIND!r})")
    if "summary" in data and not isinstance(data["summary"], dict):
        raise EmbedlabError(f"invalid study file {json_path}: 'summary' must be a JSON object")
    name = data.get("name") if isinstance(data.get("name"), str) else json_path.stem
    listed = data.get("figures")
    folder = json_path.parent
    if isinstance(listed, dict) and listed:
        candidates = {str(k): folder / str(v) for k, v in listed.items() if isinstance(v, str)}
    else:
        candidates = {p.stem: p for p in sorted(folder.glob("*.png"))}
    figures = {}
    for fig_name, p in candidates.items():
        try:
            inside = p.resolve().is_relative_to(folder.resolve())  # a figure path may not leave the study folder
            ok = inside and p.is_file() and p.suffix.lower() == ".png" and p.stat().st_size <= MAX_FIGURE_BYTES
        except OSError:
            ok = False
        if ok:
            figures[fig_name] = p
    return StudyResult(name, json_path, data, figures)


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
        out.append(dataclasses.replace(m, name=new))
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------------------------- schema version 1

_V1_OVERVIEW = "overview"
_V1_OVERVIEW_MAX_METRICS = 4  # a v1 analysis with at most this many flat metrics joined the overview table
_V1_OOD_ANALYSES = ("ood", "ood_logits")
_V1_SECTION_OF = {"ood_logits": "ood"}  # both OOD analyses write the same metric names: one section
_V1_OOD_METRICS = {"auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95TPR"}
_V1_SECTION_TITLES = {
    _V1_OVERVIEW: "Overview", "calibration": "Calibration", "clustering": "Clustering",
    "robustness": "Adversarial robustness", "ood": "OOD detection", "embedding_mmlb": "Embedding-space MMLB",
}
_V1_SECTION_NOTES = {
    "calibration": "Temperature T fitted by NLL on the validation split; every metric on the test split.",
    "robustness": "Robust accuracy on a seeded test subset; L\u221e radii in multiples of 1/255, L2 radii in [0, 1] "
                  "pixel units; clean examples that are misclassified count as non-robust.",
    "ood": "Scores are oriented so that a higher score means in-distribution (ID). AUROC and AUPR: higher is better; "
           "FPR@95TPR (false-positive rate on OOD data at 95 % true-positive rate on ID data): lower is better. The ID "
           "set is the model's test split.",
}
_V1_ALIGN_UNIFORM_CAPTION = (
    "Wang & Isola (2020) on \u2113\u2082-normalised test embeddings: alignment is the mean squared distance between "
    "same-class pairs, uniformity the log mean Gaussian potential; lower-left is better on both.")
_V1_ROBUSTNESS_CAPTION = ("Robust accuracy against the attack radius \u03b5 (\u03b5 = 0: clean accuracy on the same "
                          "subset), one line per model.")


def _v1_eps(text: str) -> dict[str, Any]:
    """Version 1's ``eps=8/255`` / ``eps=0.5`` as version 2's key fields: ε as a number and its unit."""
    value = text[len("eps="):] if text.startswith("eps=") else text
    unit = "1/255" if value.endswith("/255") else "L2 in [0, 1] pixels"
    try:
        return {"eps": float(value.removesuffix("/255")), "eps_unit": unit}
    except ValueError:
        return {"eps": value}


def upgrade_v1(results: dict[str, Any]) -> dict[str, Any]:
    """A schema-version-1 ``results.json`` object as version 2 (docs/RESULTS_FORMAT.md): the only place that knows
    version 1's naming conventions. Returns a new dict; ``results`` is not changed.

    Metric entries get ``section``, ``table``, ``column`` and ``key`` from the metric's name and analysis (the v1
    report's layout: small flat analyses in the overview, calibration before/after temperature scaling, one table per
    robustness attack and per OOD set and metric), the top level gets ``sections``, and plot data of the analyses the
    v1 report drew get their ``kind``: calibration -> ``reliability``, robustness -> ``curves``, ood/ood_logits ->
    ``score_histograms``, plus a ``metric_scatter`` for align_uniform when alignment and uniformity exist. Plot data
    of any other analysis (never drawn) is dropped; malformed plot data of those four is kept as found, for the
    report to name. Total on any JSON object: it never raises on odd contents.
    """
    out = dict(results)
    out["schema_version"] = 2
    raw_metrics = results.get("metrics") if isinstance(results.get("metrics"), dict) else {}

    def place(analysis: str, name: str) -> tuple[str, str, dict[str, Any]]:
        """(table, column, key) of metric ``name`` of ``analysis`` in version 1's layout."""
        parts = name.split("/")
        if analysis in _V1_OOD_ANALYSES and len(parts) == 4 and parts[0] == "ood":
            _, ood_set, score, metric = parts
            set_label = "mean over OOD sets" if ood_set == "mean" else f"OOD set {ood_set}"
            return (f"{set_label} \u00b7 {_V1_OOD_METRICS.get(metric, metric)}", score,
                    {"set": ood_set, "score": score, "metric": metric})
        if analysis == "robustness" and name.startswith("robust_acc/") and len(parts) >= 3:
            eps = "/".join(parts[2:])
            return (f"robust accuracy \u00b7 {parts[1]}", eps.replace("eps=", "\u03b5 = "),
                    {"metric": "robust_acc", "attack": parts[1], **_v1_eps(eps)})
        if analysis == "calibration":
            if name == "temperature":
                return "after temperature scaling", name, {"metric": name, "scaled": True}
            if name.endswith("_ts"):
                return "after temperature scaling", name[: -len("_ts")], {"metric": name[: -len("_ts")], "scaled": True}
            return "before temperature scaling", name, {"metric": name, "scaled": False}
        if len(parts) > 1:
            return "/".join(parts[:-1]), parts[-1], {"group": "/".join(parts[:-1]), "metric": parts[-1]}
        return "", name, {"metric": name}

    entries: dict[str, dict[str, Any]] = {}
    by_analysis: dict[str, list[str]] = {}
    for name, raw in raw_metrics.items():
        name = str(name)
        entry = dict(raw) if isinstance(raw, dict) else {"value": raw, "higher_is_better": None}
        analysis = entry.get("analysis")
        if not isinstance(analysis, str) or not analysis:
            analysis = name.split("/")[0] if "/" in name else "other"
        entry["analysis"] = analysis
        entry["table"], entry["column"], entry["key"] = place(analysis, name)
        entries[name] = entry
        by_analysis.setdefault(analysis, []).append(name)
    sections: dict[str, dict[str, str]] = {}
    for analysis, names in by_analysis.items():
        flat = all(entries[n]["table"] == "" for n in names)
        small = flat and len(names) <= _V1_OVERVIEW_MAX_METRICS and analysis not in _V1_SECTION_NOTES
        section = _V1_OVERVIEW if small else _V1_SECTION_OF.get(analysis, analysis)
        for n in names:
            entries[n]["section"] = section
        sections.setdefault(section, {"title": _V1_SECTION_TITLES.get(section, section),
                                      "note": _V1_SECTION_NOTES.get(section, "")})
    out["metrics"] = entries
    out["sections"] = sections

    plots = results.get("plots") if isinstance(results.get("plots"), dict) else {}
    new_plots: dict[str, Any] = {}
    if "alignment" in entries and "uniformity" in entries:
        new_plots["align_uniform"] = {
            "kind": "metric_scatter", "title": "Alignment and uniformity", "x": "uniformity", "y": "alignment",
            "x_label": "uniformity (lower = more uniform)", "y_label": "alignment (lower = more aligned)",
            "caption": _V1_ALIGN_UNIFORM_CAPTION}
    for analysis, data in plots.items():
        if data is None:
            continue
        if analysis == "calibration":
            if isinstance(data, dict):
                diagrams = {label: data[k] for k, label in (("reliability", "before temperature scaling"),
                                                           ("reliability_ts", "after temperature scaling"))
                            if data.get(k) is not None}
                data = {"kind": "reliability", "title": "Reliability diagrams", "diagrams": diagrams}
            new_plots[analysis] = data
        elif analysis == "robustness":
            if isinstance(data, dict):
                curves = {}
                for label, c in data.items():
                    if isinstance(c, dict) and isinstance(c.get("eps"), list):  # v1's report skipped the rest
                        note = "\u00d7 1/255, L\u221e" if c.get("norm") == "Linf" else "L2, [0, 1] pixel units"
                        curves[str(label)] = {"x": c["eps"], "y": c.get("accuracy"), "note": note}
                data = {"kind": "curves", "x_label": "\u03b5", "y_label": "robust accuracy",
                        "caption": _V1_ROBUSTNESS_CAPTION, "curves": curves}
            new_plots[analysis] = data
        elif analysis in _V1_OOD_ANALYSES:
            new_plots[analysis] = {**data, "kind": "score_histograms"} if isinstance(data, dict) else data
    out["plots"] = new_plots
    return out
