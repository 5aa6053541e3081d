"""Analysis runner: model → embeddings (cached) → analyses → ``results.json`` + ``arrays.npz``.

Label noise (``--data-opt label_noise=…``) is a training condition: analyses rebuild the dataset *without* it, so
metrics that use the training split (kNN bank, linear probe, …) measure the embedding against the true labels; the
noise description is recorded under ``dataset.label_noise`` in results.json, with ``dataset.train_labels = "clean"``.

Each input an analysis needs is computed once (a split's extraction, OOD sets, the model itself) and shared; an
analysis whose needs the model cannot provide (no logits in a precomputed array, no nn.Module for attacks) is skipped
and the reason recorded under ``skipped`` in results.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from embedlab.analyses.registry import ANALYSES, Inputs, Output, complete_metrics, section_info
from embedlab.checkpoint import check_meta, load_model, resolve_checkpoint, utc_now, versions
from embedlab.config import MAX_CLASSES, check_option_types
from embedlab.data import DataSource, create_dataset, without_label_noise
from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write, atomic_write_json, exclusive, require_regular_file, sha256_file, with_digest
from embedlab.store import Extracted, cached_extract, precision

SCHEMA_VERSION = 2  # docs/RESULTS_FORMAT.md
KIND = "embedlab.analysis"


@dataclass
class Source:
    """A model to analyse: an nn.Module with its dataset, or precomputed arrays per split."""

    name: str
    path: Path
    sha256: str
    meta: dict[str, Any]
    classes: tuple[str, ...]
    model: torch.nn.Module | None = None
    data: DataSource | None = None
    arrays: dict[str, Extracted] = field(default_factory=dict)
    label_noise: dict[str, Any] | None = None  # the training labels' noise (analyses use the clean labels)

    @property
    def has_logits(self) -> bool:
        """Whether the test split has logits (need ``"logits"``): every analysis needing them reads the test split's;
        one that also reads another split's (calibration's temperature, fitted on val) checks that split itself."""
        if self.model is not None:
            return getattr(self.model, "has_logits", True)  # a text encoder has none
        test = self.arrays.get("test")
        return test is not None and test.logits is not None


def select_analyses(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of registered analysis names."""
    if spec.strip() == "all":
        return ANALYSES.names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise EmbedlabError("--analyses: give 'all' or a comma-separated list of analysis names")
    for n in names:
        ANALYSES.get(n)
    return names


def open_checkpoint(path: str | Path, device: str, data_root: str | None) -> Source:
    weights = resolve_checkpoint(path)
    # resolved: `analyze .` inside a run directory is named after that directory, not ""
    name = (weights.resolve().parent.name if weights.name in ("model.safetensors", "best.safetensors")
            else weights.stem)
    model, meta = load_model(weights, device)
    check_meta(meta, weights, require_dataset=True)
    cfg = meta.get("config", {})
    ds_name = meta["dataset"]["name"]
    data, noise = _clean(create_dataset(ds_name, data_root or cfg.get("data_root"), False,
                                        **cfg.get("dataset_options", {})), meta["dataset"].get("label_noise"))
    if data.info.num_classes != model.num_classes:
        raise EmbedlabError(f"{weights}: model predicts {model.num_classes} classes but dataset {ds_name!r} "
                            f"has {data.info.num_classes}")
    return Source(name, weights, sha256_file(weights), meta, data.info.classes, model=model, data=data,
                  label_noise=noise)


def _clean(data: DataSource, known: dict[str, Any] | None = None) -> tuple[DataSource, dict[str, Any] | None]:
    """The dataset with clean training labels, and the description of the label noise it had (None if none):
    ``known`` (as recorded in the checkpoint when the model was trained), else measured now."""
    clean = without_label_noise(data)
    if clean is data:
        return data, None
    return clean, known or data.describe()["label_noise"]


FOREIGN_MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit", ".ckpt", ".bin", ".pkl")
CODE_KINDS = {"factory": "imports and calls the Python function {arch!r}",
              "torchscript": "runs the TorchScript program in {weights!r}",
              "export": "loads the exported program {weights!r} with torch.export.load, which unpickles parts of it"}


def open_spec(path: str | Path, device: str, data_root: str | None, trust_code: bool = False) -> Source:
    """An external model described by a JSON spec (see :mod:`embedlab.external`). Kinds ``factory`` and
    ``torchscript`` run code from outside embedlab when loaded: only with ``trust_code`` (``--trust-code``)."""
    from embedlab.external import build_external, is_sentence_encoder, read_spec

    p = Path(path)
    spec = read_spec(p)
    if spec.kind in CODE_KINDS and not trust_code:
        raise EmbedlabError(f"model spec {p}: kind {spec.kind!r} " + CODE_KINDS[spec.kind].format(
            arch=spec.arch, weights=spec.weights) + "; refusing without --trust-code (pass it only for code you trust)")
    spec_root = spec.data_root and str(p.parent / Path(spec.data_root).expanduser())  # relative to the spec, as weights
    if spec.dataset == "text" or (spec.kind == "huggingface" and spec.weights
                                  and is_sentence_encoder(p.parent / Path(spec.weights).expanduser())):
        return _open_text_spec(spec, p, device, data_root or spec_root)
    data, noise = _clean(create_dataset(spec.dataset, data_root or spec_root, False, **spec.dataset_options))
    model, sha = build_external(spec, data.info.input_shape, data.info.num_classes, p.parent)
    x = data.split("test")[0][0].unsqueeze(0)
    try:
        with torch.no_grad():
            if getattr(model, "has_logits", True):
                n_out = model(x).shape[-1]
            else:  # an encoder without a classifier
                model.embed_and_logits(x)
                n_out = data.info.num_classes
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (" (a text+vision model: save its vision tower, e.g. CLIPVisionModelWithProjection, and give that "
                "folder)" if spec.kind == "huggingface" and "input_ids" in msg else "")
        raise EmbedlabError(f"{p}: the model cannot run on {spec.dataset!r} inputs of shape {tuple(x.shape)}: "
                            f"{msg}{hint}") from None
    if n_out != data.info.num_classes:
        raise EmbedlabError(f"{p}: model outputs {n_out} classes but dataset {spec.dataset!r} has "
                            f"{data.info.num_classes}")
    meta = {"external": dataclasses.asdict(spec), "model": {"name": f"{spec.kind}:{spec.arch or p.stem}"},
            "method": {"name": "external", "options": {}}, "dataset": {"name": spec.dataset}}
    return Source(spec.name, p, sha, meta, data.info.classes, model=model.to(device), data=data, label_noise=noise)


def _open_text_spec(spec: Any, p: Path, device: str, root: str | None) -> Source:
    """A sentence-transformers encoder (``kind: huggingface``) on a text dataset given as files
    (``dataset: text``, see :mod:`embedlab.text`): embeddings only, no logits and no input gradients."""
    from embedlab.external import build_text_encoder, is_sentence_encoder
    from embedlab.text import TextData

    folder = p.parent / Path(spec.weights).expanduser() if spec.weights else None
    if spec.kind != "huggingface" or folder is None or not is_sentence_encoder(folder):
        raise EmbedlabError(f"model spec {p}: dataset 'text' is read by text encoders: kind 'huggingface' with "
                            f"'weights' a sentence-transformers folder (one with modules.json)")
    if spec.dataset != "text":
        raise EmbedlabError(f"model spec {p}: {folder} is a sentence-transformers text encoder; give \"dataset\": "
                            f"\"text\" and \"data_root\": a folder of train/test .jsonl, .csv or .tsv files")
    if not root:
        raise EmbedlabError(f"model spec {p}: dataset 'text' needs \"data_root\" (a folder holding test.jsonl and "
                            f"train.jsonl, or .csv/.tsv) or --data-root")
    data = TextData(root, **spec.dataset_options)
    model, sha = build_text_encoder(spec, p.parent)
    meta = {"external": dataclasses.asdict(spec), "model": {"name": f"huggingface:{Path(spec.weights).name}"},
            "method": {"name": "external", "options": {}}, "dataset": {"name": data.info.name}}
    return Source(spec.name, p, sha, meta, data.info.classes, model=model.to(device), data=data)


def open_arrays(path: str | Path) -> Source:
    """Precomputed embeddings (``.npz``): embedding-only analyses, plus logit-based ones when logits are given."""
    from embedlab.external import read_arrays

    p = Path(path)
    splits, classes = read_arrays(p)
    # the class count comes from what the file holds (label values, logit columns, class names) and is bounded
    # before anything per class is allocated: a label of 10**9 in a few-byte file must not build 10**9 names
    n_cls = max(int(s["labels"].max()) + 1 for s in splits.values())
    widths = {s["logits"].shape[1] for s in splits.values() if s["logits"] is not None}
    if widths and widths != {max(n_cls, *widths)}:
        raise EmbedlabError(f"{p}: logits have {sorted(widths)} columns but labels reach class {n_cls - 1}")
    n_cls = max(n_cls, *widths) if widths else n_cls
    if n_cls > MAX_CLASSES:
        raise EmbedlabError(f"{p}: {n_cls} classes; embedlab reads at most {MAX_CLASSES}")
    if classes is not None and len(classes) < n_cls:
        raise EmbedlabError(f"{p}: {len(classes)} class names for {n_cls} classes")
    n_examples = sum(len(s["labels"]) for s in splits.values())
    if classes is None and not widths and n_cls > n_examples:
        raise EmbedlabError(f"{p}: labels reach class {n_cls - 1} but there are only {n_examples} examples; labels "
                            f"must be class indices 0 .. C-1 (for classes without examples, give 'classes' names or "
                            f"'logits')")
    classes = classes or tuple(str(i) for i in range(n_cls))
    arrays = {k: Extracted(v["embeddings"], v["logits"], v["labels"]) for k, v in splits.items()}
    meta = {"model": {"name": "precomputed"}, "method": {"name": "–", "options": {}}, "dataset": {"name": p.stem}}
    return Source(p.stem, p, sha256_file(p), meta, classes, arrays=arrays)


def open_source(path: str | Path, device: str = "cpu", data_root: str | None = None, *,
                trust_code: bool = False) -> Source:
    """Dispatch on what ``path`` is: a model spec (.json), precomputed arrays (.npz), or an embedlab checkpoint.
    ``trust_code``: allow model specs that run code (kinds ``factory`` and ``torchscript``)."""
    p = Path(path)
    if p.exists() and not p.is_dir():  # a FIFO or device would block the first read: refused before it
        require_regular_file(p, "model spec" if p.suffix == ".json" else "arrays file" if p.suffix == ".npz"
                             else "checkpoint")
    if p.suffix == ".json" and p.is_file():
        return open_spec(p, device, data_root, trust_code)
    if p.suffix == ".npz":
        if not p.exists():
            raise EmbedlabError(f"arrays file not found: {p}")
        return open_arrays(p)
    if p.suffix.lower() in FOREIGN_MODEL_SUFFIXES and p.is_file():
        raise EmbedlabError(f"{p} is not an embedlab checkpoint: a {p.suffix} file (PyTorch weights or a TorchScript "
                            f"program) is analysed through a JSON model spec naming it, e.g. {{\"name\": \"m\", "
                            f"\"kind\": \"torchvision\", \"arch\": \"resnet18\", \"weights\": \"{p.name}\", "
                            f"\"dataset\": \"cifar10\"}} or kind \"torchscript\" (with --trust-code); see the README, "
                            f"\"Models in\"")
    return open_checkpoint(p, device, data_root)


def _resolve_needs(src: Source, needs: tuple[str, ...]) -> str | None:
    """Why ``src`` cannot satisfy ``needs`` (None when it can)."""
    for need in needs:
        if need == "logits" and not src.has_logits:
            others = [k for k, a in src.arrays.items() if a.logits is not None]
            if src.model is None and others:
                return (f"the test split has no logits (only {', '.join(others)} ha{'s' if len(others) == 1 else 've'}"
                        f" them; give test_logits, or logits)")
            return "the model provides no logits (embeddings only)"
        if need in ("model", "test_data", "ood_data") and src.model is None:
            return "needs the model itself (precomputed embeddings cannot be attacked or back-propagated)"
        if need in ("model", "test_data", "ood_data") and not getattr(src.model, "input_gradients", True):
            return "needs gradients with respect to the inputs, and the inputs are text"
        if need in ("train", "val", "test") and src.model is None and need not in src.arrays:
            return f"no {need} split in the precomputed arrays"
        if need in ("train", "val", "test") and src.data is not None and need not in src.data.splits:
            return f"no {need} split in the dataset"
        if need in ("ood", "ood_data") and (src.data is None or src.data.info.input_shape == ()):
            return "no dataset to draw OOD sets for" if src.data is None else "no OOD sets for text datasets"
    return None


def analyze_source(src: Source, out_root: str | Path, *, analyses: list[str] | None = None,
                   cache_dir: str | Path | None = None, device: str = "cpu", force: bool = False,
                   progress: bool = True, settings: dict[str, dict[str, Any]] | None = None,
                   ood: list[str] | None = None, data_root: str | None = None) -> Path:
    """Run analyses on one source; writes ``out_root/<name>/results.json`` and ``arrays.npz`` (``<name>``: the
    source's name made a safe directory name, always directly under ``out_root``)."""
    out = Path(out_root) / safe_dir_name(src.name)
    with _exclusive(out):
        return _analyze_locked(src, out, analyses=analyses, cache_dir=cache_dir, device=device, force=force,
                               progress=progress, settings=settings, ood=ood, data_root=data_root)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``out_root/.<name>.lock`` while ``out`` is analysed and written (:func:`embedlab.io.exclusive`): a second
    ``analyze`` writing the same results folder (two models with one name into one --out) fails at once instead of
    silently replacing the first's results. A failed analysis leaves no empty --out behind."""
    created = not out.parent.exists()
    try:
        with exclusive(out, "writing", "wait for it to finish, or give this model another name or --out"):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                out.parent.rmdir()


def _analyze_locked(src: Source, out: Path, *, analyses: list[str] | None, cache_dir: str | Path | None,
                    device: str, force: bool, progress: bool, settings: dict[str, dict[str, Any]] | None,
                    ood: list[str] | None, data_root: str | None) -> Path:
    _check_overwrite(out / "results.json", src.sha256, force)
    chosen = analyses or ANALYSES.names()
    settings = settings or {}
    check_settings(settings, chosen)
    runnable, skipped = [], {}
    for a in chosen:
        reason = _resolve_needs(src, ANALYSES.get(a).meta["needs"])
        if reason:
            skipped[a] = reason
        else:
            runnable.append(a)
    for a in list(runnable):  # e.g. ood_logits beside ood: the same scores would be computed twice, same names
        cover = ANALYSES.get(a).meta.get("covered_by")
        if cover in runnable and not settings.get(a) and not settings.get(cover):  # settings given: run as asked
            runnable.remove(a)
            skipped[a] = f"{cover} computes the same metrics (and more) on this model"
    _check_class_count(src, runnable)
    needed = {s for a in runnable for s in ANALYSES.get(a).meta["needs"]}
    needed |= {s for a in runnable for s in ANALYSES.get(a).meta.get("optional", ())
               if _resolve_needs(src, (s,)) is None}  # used where the source has them
    splits = dict(src.arrays)
    if src.model is not None and src.data is not None:
        for split in sorted(needed & {"train", "val", "test"} | {"test"}):
            splits[split], _ = cached_extract(src.model, src.sha256, src.data.describe(), split, src.data.split(split),
                                              cache_dir, device=device, progress=progress, desc=f"{src.name}/{split}")
    ood_sets: dict[str, Dataset] = {}
    if needed & {"ood", "ood_data"} and src.data is not None:
        from embedlab.oodsets import build_ood_sets, default_ood_specs

        ood_sets = build_ood_sets(ood or default_ood_specs(src.data), src.data, data_root=data_root)
    ood_x, ood_data = {}, {}
    if ood_sets:
        for name, ds in ood_sets.items():
            ood_data[name] = ds
            if "ood" in needed:
                ood_x[name], _ = cached_extract(src.model, src.sha256, {"ood": name, **src.data.describe()}, "ood", ds,
                                              cache_dir, device=device, progress=progress, desc=f"{src.name}/ood:{name}")
    if "test" not in splits:
        raise EmbedlabError(f"{src.path}: no test split to analyse")
    for split, arrays in [*splits.items(), *((f"ood:{k}", v) for k, v in ood_x.items())]:
        _check_finite(src, split, arrays)
    inp = Inputs(splits, len(src.classes), src.classes, model=src.model, device=torch.device(device),
                 test_data=src.data.split("test") if src.data is not None and "test_data" in needed else None,
                 ood=ood_x, ood_data=ood_data, progress=progress)
    if progress:
        _announce_cost(inp, runnable, settings)
    metrics: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    extra_arrays: dict[str, np.ndarray] = {}
    for a in runnable:
        try:
            res: Output = ANALYSES.get(a).obj(inp, **settings.get(a, {}))
        except (ValueError, TypeError) as e:
            if not settings.get(a):
                if isinstance(e, ValueError):  # the input cannot support the analysis (e.g. one example per class)
                    raise EmbedlabError(f"{src.path}: analysis {a!r} cannot run on this input: "
                                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__} "
                                        f"(leave it out with --analyses)") from e
                raise
            given = ", ".join(f"{k}={v}" for k, v in settings[a].items())
            raise EmbedlabError(f"--opt {a}: analysis {a!r} rejected the settings {given}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        metrics.update(complete_metrics(res.metrics))
        skipped.update({f"{a}.{part}": why for part, why in res.skipped.items()})
        if res.plots:
            plots[a] = res.plots
        extra_arrays.update({f"{a}.{k}": v for k, v in res.arrays.items()})

    sections = {sec: section_info(sec) for sec in dict.fromkeys(m["section"] for m in metrics.values())}
    missing = src.data.describe().get("missing_classes") if src.data is not None else None
    test = splits["test"]
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": test.embeddings, "labels": test.labels, **extra_arrays}
    if src.data is not None and src.data.info.is_image:
        arrays["thumbnail_index"], arrays["thumbnails"] = thumbnails(src.data.split("test"), seed=inp.seed)
    if test.logits is not None:
        arrays["logits"] = test.logits
    with atomic_write(out / "arrays.npz") as fh:
        np.savez(fh, **arrays)
    # the pair is one unit: results.json names the SHA-256 of the arrays written with it, and the report refuses a
    # results.json beside arrays.npz of another analysis (a failure between the two replacements)
    # digest: the file's own SHA-256 (embedlab.io.json_digest), so an edit after writing is detected (a study does
    # not aggregate an edited results.json; the report warns)
    atomic_write_json(out / "results.json", with_digest({
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "model": {"name": src.name, "source": str(src.path), "sha256": src.sha256, "meta": src.meta},
        "dataset": {"name": src.meta.get("dataset", {}).get("name", "?"), "split": "test",
                    "num_examples": int(len(test.labels)), "classes": list(src.classes),
                    **({"missing_classes": missing} if missing else {}),
                    **({"label_noise": src.label_noise, "train_labels": "clean"} if src.label_noise else {})},
        # how the embeddings were extracted (None: precomputed arrays): a bf16 GPU run and an fp32 CPU run differ
        "extraction": ({"device": str(torch.device(device)), "precision": precision(device)}
                       if src.model is not None and src.data is not None else None),
        "metrics": metrics, "sections": sections, "plots": plots, "skipped": skipped, "settings": settings,
        "arrays": "arrays.npz",
        "arrays_sha256": sha256_file(out / "arrays.npz"), "created_utc": utc_now(), "versions": versions(),
    }))
    return out


def _announce_cost(inp: Inputs, runnable: list[str], settings: dict[str, dict[str, Any]]) -> None:
    """Before the analyses that back-propagate to the input start: one line each on stderr with their estimated time,
    from their pass count and one measured forward+backward batch of 256 (after a warm-up pass); the other analyses
    run on extracted embeddings in seconds to a minute."""
    import sys
    import time

    passes = {}
    for a in runnable:
        count = ANALYSES.get(a).meta.get("gradient_passes")
        n = count(inp, **settings.get(a, {})) if count is not None else 0
        if n:
            passes[a] = n
    if not passes or inp.model is None or inp.test_data is None or len(inp.test_data) == 0:
        return
    from torch.utils.data import DataLoader, Subset

    from embedlab.data import collate_batched

    batch = min(256, len(inp.test_data))  # the attacks' and ODIN's default batch: per-example cost depends on it
    x, _ = next(iter(DataLoader(Subset(inp.test_data, range(batch)), batch_size=batch, collate_fn=collate_batched)))
    x = x.to(inp.device)
    was = inp.model.training
    inp.model.eval()
    try:
        for timed in (False, True):  # a warm-up pass first: the first call pays for allocation and kernel choice
            xb = (x if timed else x[:8]).clone().requires_grad_(True)
            t0 = time.perf_counter()
            inp.model(xb).logsumexp(1).sum().backward()
        per = (time.perf_counter() - t0) / batch
    except RuntimeError:
        return  # the analysis itself will say what is wrong
    finally:
        inp.model.zero_grad(set_to_none=True)
        inp.model.train(was)
    for a, n in passes.items():
        sys.stderr.write(f"embedlab: {a}: about {n * per:,.0f} s ({n:,} input-gradient passes at {per * 1e3:.1f} ms, "
                         f"measured on one batch; --opt {a}.max_examples bounds it)\n")


def analyze_path(path: str | Path, out_root: str | Path, *, device: str = "cpu", data_root: str | None = None,
                 trust_code: bool = False, **kw: Any) -> Path:
    """Analyse a checkpoint, a model spec (.json) or precomputed arrays (.npz). ``trust_code``: allow model specs
    that run code (kinds ``factory`` and ``torchscript``; ``embedlab analyze --trust-code``)."""
    return analyze_source(open_source(path, device, data_root, trust_code=trust_code), out_root, device=device,
                          data_root=data_root, **kw)


def safe_dir_name(name: str, limit: int = 200) -> str:
    """``name`` as one directory name that stays where it is put: path separators and control characters become
    ``_``, leading dots and spaces are dropped (no ``..``, no hidden folder), at most ``limit`` bytes (UTF-8);
    never empty. ``"../../escaped"`` → ``"_.._escaped"``, ``"/tmp/x"`` → ``"_tmp_x"``."""
    import re

    safe = re.sub(r"[/\\\x00-\x1f\x7f]", "_", str(name)).lstrip(". ")
    safe = safe.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").rstrip(" ")
    return safe if safe not in ("", ".", "..") else "model"



def thumbnails(dataset: Dataset, *, limit: int = 2000, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subset of up to ``limit`` test images as uint8 ``(n, h, w, C)`` (at most ``size`` px), with their
    indices, saved so that the report can show an image when hovering a point (reports never read the dataset)."""
    from torch.utils.data import DataLoader, Subset

    from embedlab.data import collate_batched

    n = len(dataset)
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=256, collate_fn=collate_batched)
    out = []
    for x, _ in loader:
        x = torch.as_tensor(x).float()
        if x.shape[-1] > size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return idx.astype(np.int64), np.concatenate(out) if out else np.zeros((0, size, size, 1), np.uint8)


def check_settings(settings: dict[str, dict[str, Any]], chosen: list[str]) -> None:
    """Every ``--opt ANALYSIS.KEY`` must name a chosen analysis and one of its keyword arguments."""
    import inspect

    for analysis, values in settings.items():
        if analysis not in chosen:
            ANALYSES.get(analysis)  # unknown name → lists the known ones
            raise EmbedlabError(f"--opt {analysis}.…: analysis {analysis!r} is not selected (see --analyses)")
        params = [p for p in inspect.signature(ANALYSES.get(analysis).obj).parameters if p != "inp"]
        for key in values:
            if key not in params:
                raise EmbedlabError(f"--opt {analysis}.{key}: unknown setting; {analysis} takes: "
                                    f"{', '.join(params) or 'none'}")
        check_option_types(ANALYSES.get(analysis).obj, values, f"--opt {analysis}")


def _check_class_count(src: Source, runnable: list[str]) -> None:
    """One line naming the first analysis that needs more classes than the dataset has (a single class: accuracy,
    kNN, calibration, clustering, OOD scores are trivial or undefined), before anything is extracted."""
    n = len(src.classes)
    for a in runnable:
        need = ANALYSES.get(a).meta.get("min_classes", 1)
        if n < need:
            able = [b for b in runnable if ANALYSES.get(b).meta.get("min_classes", 1) <= n]
            names = ", ".join(map(repr, src.classes[:3]))
            raise EmbedlabError(f"{src.path}: analysis {a!r} needs at least {need} classes, and the dataset has {n} "
                                f"({names}); leave it out with --analyses"
                                + (f" (on {n} class{'es' if n != 1 else ''}: {', '.join(able)})" if able else ""))


def _check_finite(src: Source, split: str, arrays: Extracted, rows: int = 1 << 16) -> None:
    """Refuse NaN/Inf embeddings or logits (a diverged model): every metric of them would be meaningless.
    Checked ``rows`` at a time, so that memory-mapped extractions are never loaded whole."""
    for name, a in (("embeddings", arrays.embeddings), ("logits", arrays.logits)):
        if a is None:
            continue
        for start in range(0, len(a), rows):
            if not np.isfinite(a[start:start + rows]).all():
                raise EmbedlabError(f"{src.path}: the {split} {name} contain NaN or Inf (a diverged model?); "
                                    f"nothing to analyse")


def _check_overwrite(results: Path, sha: str, force: bool) -> None:
    """Refuse to replace results of a *different* model unless ``force``; same model → refresh in place."""
    if force or not results.exists():
        return
    try:
        old = json.loads(results.read_text())["model"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        old = None
    if old != sha:
        raise EmbedlabError(f"{results} holds results of another model; choose another --out or pass --force")
