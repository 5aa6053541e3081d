"""The Python API, and the one composition root over every layer: ``train → evaluate → report``.

>>> import embedlab                                                          # doctest: +SKIP
>>> run = embedlab.train({"dataset": "digits", "method": "multimix", "epochs": 5}, "runs/mm")
>>> res = embedlab.evaluate(run.path, out="results")                        # or arrays: see evaluate()
>>> res.metrics["silhouette"], res.to_frame()
>>> embedlab.report([res], "report.html")

``embedlab.cli`` is argparse over these functions and nothing else. Trainers, analyses and reports never import this
module; it imports them lazily, so ``import embedlab`` stays as cheap as ``import torch``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from embedlab.config import TrainConfig, apply_assignments, auto_type, parse_assignments
from embedlab.errors import EmbedlabError

if TYPE_CHECKING:
    import pandas
    import torch

__all__ = ["Results", "Run", "evaluate", "list_plugins", "report", "study", "train", "train_config", "demo"]

DEMO_METHODS = ("erm", "mixup", "manifold_mixup", "multimix", "dense_multimix")


# ----------------------------------------------------------------------------------------------------- results
class Results:
    """One model's analysis results, read-only: what ``results.json`` (schema 2) and ``arrays.npz`` hold.

    ``metrics``: ``{name: float}``; ``entries``: the full metric descriptors (value, direction, analysis, settings,
    section/table/column/key); ``skipped``: ``{analysis: reason}``; ``path``: the results folder (what
    :func:`report` and ``embedlab report`` read). Results evaluated without ``out`` live in a temporary folder
    removed when this object is garbage-collected.
    """

    __slots__ = ("_data", "_path", "_finalizer", "__weakref__")

    def __init__(self, path: str | os.PathLike[str], *, _temporary: bool = False) -> None:
        from embedlab.reports.load import load_results

        p = Path(path)
        loaded = load_results([p])
        if len(loaded) != 1:
            raise EmbedlabError(f"{p}: expected one results set, found {len(loaded)}")
        object.__setattr__(self, "_data", json.loads(json.dumps(loaded[0].results)))  # a private deep copy
        object.__setattr__(self, "_path", loaded[0].path.parent)
        fin = weakref.finalize(self, shutil.rmtree, str(Path(loaded[0].path).parent.parent), True) if _temporary \
            else None
        object.__setattr__(self, "_finalizer", fin)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Results is read-only")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def name(self) -> str:
        return str((self._data.get("model") or {}).get("name", self._path.name))

    @property
    def metrics(self) -> Mapping[str, float]:
        return MappingProxyType({k: float(e["value"]) for k, e in self._data.get("metrics", {}).items()})

    @property
    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        return MappingProxyType({k: MappingProxyType(dict(e)) for k, e in self._data.get("metrics", {}).items()})

    @property
    def skipped(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self._data.get("skipped") or {}))

    @property
    def dataset(self) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._data.get("dataset") or {}))

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the whole ``results.json``."""
        return json.loads(json.dumps(self._data))

    def to_frame(self) -> "pandas.DataFrame":
        """One row per metric: model, metric, value, higher_is_better, analysis, section, table, column, and one
        column per coordinate of the metrics' ``key`` (set, score, attack, ...)."""
        import pandas as pd

        rows = []
        for k, e in self._data.get("metrics", {}).items():
            rows.append({"model": self.name, "metric": k, "value": float(e["value"]),
                         "higher_is_better": e.get("higher_is_better"), "analysis": e.get("analysis"),
                         "section": e.get("section"), "table": e.get("table"), "column": e.get("column"),
                         **{str(kk): vv for kk, vv in (e.get("key") or {}).items()
                            if kk not in ("model", "metric", "value")}})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(self.metrics.items())[:4])
        more = len(self.metrics) - 4
        return f"Results({self.name!r}, {shown}{f', … {more} more' if more > 0 else ''})"


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run: its folder (``model.safetensors``, ``best.safetensors``, ``meta.json``, ...) and config."""

    path: Path
    config: TrainConfig

    @property
    def checkpoint(self) -> Path:
        from embedlab.checkpoint import WEIGHTS

        return self.path / WEIGHTS

    def evaluate(self, **kwargs: Any) -> Results:
        """:func:`evaluate` on this run."""
        return evaluate(self.path, **kwargs)


# ----------------------------------------------------------------------------------------------------- train
def train_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None, *,
                 recipe: str | None = None, saved: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None, assignments: Sequence[str] | None = None,
                 mix_layer: str | None = None) -> TrainConfig:
    """The resolved, validated training config. Layers, lowest first: TrainConfig defaults < ``saved`` (a run being
    resumed) < ``recipe`` (packaged name or file) < ``config`` (a dict, a TrainConfig, or a JSON file: plain keys, a
    recipe or a run's meta.json) < ``overrides`` (None values ignored) < ``assignments`` (``"key=value"`` strings,
    dotted keys allowed, as ``--set``) < ``mix_layer`` (the mixing point of methods that mix hidden states)."""
    from embedlab.recipes import load_recipe, read_config_file

    base: dict[str, Any] = dict(saved or {})
    if recipe:
        base.update(load_recipe(recipe).config)
    if isinstance(config, TrainConfig):
        base.update(dataclasses.asdict(config))
    elif isinstance(config, Mapping):
        base.update(config)
    elif config is not None:
        base.update(read_config_file(config))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("dataset_options", "model_options", "method_options"):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    base = apply_assignments(base, list(assignments) if assignments else None, "--set")
    for key in ("dataset_options", "model_options"):
        if key in base:
            base[key] = {k: auto_type(v) for k, v in base[key].items()}
    if mix_layer:
        base["method_options"] = {**base.get("method_options", {}),
                                  **_mix_layer_option(base.get("method", "erm"), mix_layer)}
    cfg = TrainConfig.from_dict(base, "train", strict=True)
    cfg.validate("train")
    return cfg


def _mix_layer_option(method: str, layer: str) -> dict[str, str]:
    """``--mix-layer NAME[,NAME]`` sets the mixing-point option of methods that mix hidden states."""
    from embedlab.methods import METHODS

    fields = {f.name for f in dataclasses.fields(METHODS.get(method).obj.Options)}
    for key in ("layers", "layer"):
        if key in fields:
            return {key: layer}
    raise EmbedlabError(f"--mix-layer: method {method!r} does not mix hidden states (it has no layers option)")


def check_new_run(out: str | os.PathLike[str], force: bool, resume: bool = False) -> None:
    """Never overwrite a run silently: a new run needs an empty ``out`` or ``force``; ``resume`` needs a training
    state when the run has a checkpoint (with none yet, it starts the run)."""
    from embedlab.checkpoint import WEIGHTS
    from embedlab.trainers.state import STATE_FILE

    out = Path(out)
    if resume:
        if (out / WEIGHTS).exists() and not (out / STATE_FILE).exists():
            raise EmbedlabError(f"--resume: {out} holds a checkpoint but no {STATE_FILE} to resume from; "
                                f"choose another --out, or pass --force instead of --resume to overwrite it")
        return
    existing = next((out / n for n in (WEIGHTS, STATE_FILE) if (out / n).exists()), None)
    if existing is not None and not force:
        raise EmbedlabError(f"{existing} already exists; choose another --out, pass --resume to continue it "
                            f"or --force to overwrite")
    if force and os.environ.get("RANK", "0") == "0" and existing is not None:  # under torchrun only rank 0
        from embedlab.io import exclusive

        with exclusive(out, "training", "wait for it to finish before overwriting it, or choose another --out"):
            for name in ("metrics.jsonl", STATE_FILE):  # not while another process trains into it
                (out / name).unlink(missing_ok=True)


def check_writable(folder: str | os.PathLike[str], name: str | os.PathLike[str] | None = None) -> None:
    """Fail now, naming ``name`` (default: the folder), if ``folder`` could not be created or written: before slow
    work, not after it. Creates nothing: a probe file is made and removed in the nearest existing ancestor."""
    folder = Path(folder)
    where = str(name or folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", where)
    try:
        fd, probe = tempfile.mkstemp(prefix=".embedlab-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), where) from None


def check_seeds(seeds: Sequence[int], text: str | None = None) -> tuple[int, ...]:
    """Seeds of a multi-seed run or study: at least one, distinct, none negative."""
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise EmbedlabError(f"--seeds: expected distinct integers >= 0, got {text or ','.join(map(str, seeds))!r}")
    if max(seeds) > 2**63 - 1:
        raise EmbedlabError(f"--seeds: a seed must be <= 2**63 - 1 (torch takes a signed 64-bit seed), got "
                            f"{max(seeds)}")
    return seeds


def train(config: TrainConfig | Mapping[str, Any] | str | os.PathLike[str] | None, out: str | os.PathLike[str], *,
          recipe: str | None = None, overrides: Mapping[str, Any] | None = None,
          assignments: Sequence[str] | None = None, mix_layer: str | None = None,
          seeds: Sequence[int] | None = None, resume: bool = False, force: bool = False,
          progress: bool = True) -> Run | list[Run]:
    """Train one run into ``out`` (or one per seed into ``out/seed<S>``, returning a list of :class:`Run`).

    ``config``: a :class:`TrainConfig`, a dict of its keys (over the defaults), or a config/recipe JSON file;
    ``recipe``, ``overrides``, ``assignments``, ``mix_layer``: layered as in :func:`train_config`.
    ``resume``: continue each run after its last completed epoch (the config must equal the saved one; with no
    run there yet, start it); ``force``: overwrite existing runs. Every run is checked before any starts. Under
    ``torchrun``, call it in every process.
    """
    from embedlab.trainers import distributed_session, saved_config
    from embedlab.trainers import train as train_loop

    if resume and force:
        raise EmbedlabError("--resume continues a run and --force overwrites it: give only one of them")
    out = Path(out)
    runs = [(out / f"seed{s}", s) for s in check_seeds(seeds)] if seeds is not None else [(out, None)]
    plan = []
    for run_dir, seed in runs:
        check_new_run(run_dir, force, resume)
        saved = saved_config(run_dir) if resume else None
        cfg = train_config(config, recipe=recipe, saved=saved, overrides=overrides, assignments=assignments,
                           mix_layer=mix_layer)
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
        plan.append((cfg, run_dir, saved is not None))
    if os.environ.get("RANK", "0") == "0":
        for _, run_dir, _ in plan:
            check_writable(run_dir)
    done = []
    with distributed_session(plan[0][0].device):
        for cfg, run_dir, res in plan:
            train_loop(cfg, run_dir, progress=progress, resume=res)
            done.append(Run(run_dir, cfg))
    return done if seeds is not None else done[0]


# -------------------------------------------------------------------------------------------------- evaluate
def analysis_settings(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["ANALYSIS.KEY=VALUE", ...]`` (``--opt``) → ``{analysis: {key: value}}``."""
    settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(list(items) if items else None, "--opt").items():
        analysis, dot, name = key.partition(".")
        if not dot or not name:
            raise EmbedlabError(f"--opt: expected ANALYSIS.KEY=VALUE, got {key}={value}")
        settings.setdefault(analysis, {})[name] = auto_type(value)
    return settings


def resolve_device(name: str) -> str:
    """``auto``, ``cpu`` or ``cuda[:N]`` as a device string; anything else is one clear line."""
    from embedlab.trainers.distributed import resolve_device as resolve

    return str(resolve(name))


def evaluate(source: Any = None, *, out: str | os.PathLike[str] | None = None,
             analyses: str | Sequence[str] = "all", settings: Mapping[str, Mapping[str, Any]] | None = None,
             ood: Sequence[str] | None = None, device: str = "auto", cache_dir: str | os.PathLike[str] | None = None,
             data_root: str | None = None, force: bool = False, progress: bool = False, trust_code: bool = False,
             name: str | None = None, dataset: str | None = None, dataset_options: Mapping[str, Any] | None = None,
             train: Mapping[str, Any] | None = None, val: Mapping[str, Any] | None = None,
             test: Mapping[str, Any] | None = None, embeddings: Any = None, labels: Any = None, logits: Any = None,
             classes: Sequence[str] | None = None) -> Results:
    """Run the analyses on one model and return its :class:`Results` (also written to ``out/<name>/``).

    ``source`` is one of: a run directory or ``.safetensors`` checkpoint; a model spec ``.json``; an arrays
    ``.npz``; an ``nn.Module`` with ``dataset=`` (an embedlab model, or any classifier whose last linear layer is
    its head: the embedding is that layer's input). Or give arrays instead of a source, per split
    (``train={"embeddings": z, "labels": y}``, ``test={..., "logits": l}``; each ``(N, d)`` / ``(N,)`` /
    ``(N, C)``), or ``embeddings=, labels=, logits=`` for the test split alone. Arrays go through exactly the
    checks and analyses of ``embedlab analyze`` on the same ``.npz``.

    ``analyses``: ``"all"``, a comma-separated string or a list of names (``embedlab list analyses``);
    ``settings``: ``{analysis: {key: value}}`` (as ``--opt``); ``out``: the results root (default: a temporary
    folder owned by the returned object). ``trust_code``: allow model specs that run code (factory, TorchScript).
    """
    from embedlab.analyses.runner import analyze_source, check_settings, open_source

    if isinstance(classes, (str, bytes)):
        raise EmbedlabError(f"classes= must be a list of class names, e.g. [\"cat\", \"dog\"], not the string "
                            f"{classes!r:.60} (it would be one class per character)")
    chosen = _chosen_analyses(analyses)
    if settings is not None and (not isinstance(settings, Mapping)
                                 or not all(isinstance(v, Mapping) for v in settings.values())):
        raise EmbedlabError(f"evaluate: settings must be {{analysis: {{key: value}}}}, e.g. {{'knn': {{'k': 10}}}}, "
                            f"got {settings!r:.100}")
    settings = {str(k): dict(v) for k, v in (settings or {}).items()}
    check_settings(settings, chosen)
    dev = resolve_device(device)
    arrays = {"train": train, "val": val, "test": test}
    if embeddings is not None or labels is not None or logits is not None:
        if test is not None:
            raise EmbedlabError("give the test split either as test={...} or as embeddings=/labels=/logits=, not both")
        arrays["test"] = {"embeddings": embeddings, "labels": labels, "logits": logits}
    given = {k: v for k, v in arrays.items() if v is not None}
    temporary = out is None
    if not temporary:
        check_writable(out)
    if cache_dir is not None:  # a file there: named as given, not as the cache's hidden .KEY.partial-PID folder
        check_writable(cache_dir)
    root = Path(tempfile.mkdtemp(prefix="embedlab-results-")) if temporary else Path(out)
    try:
        with tempfile.TemporaryDirectory(prefix="embedlab-arrays-") as tmp:
            if given:
                if source is not None:
                    raise EmbedlabError("give either a source or arrays (train=/val=/test= or embeddings=), not both")
                src = _arrays_source(given, classes, Path(tmp), name or "arrays")
            elif source is None:
                raise EmbedlabError("evaluate: give a source (run, checkpoint, spec, .npz or nn.Module) or arrays")
            elif _is_module(source):
                if not dataset:
                    raise EmbedlabError("evaluate(module): give dataset= (a registered dataset) for its data")
            elif not isinstance(source, (str, os.PathLike)):
                raise EmbedlabError(f"evaluate: source must be a path (run, checkpoint, spec, .npz) or an nn.Module, "
                                    f"got {type(source).__name__}")
            with _caller_module_kept(source if _is_module(source) else None):
                if given:
                    pass
                elif _is_module(source):
                    src = _module_source(source, dataset, data_root, dataset_options or {}, name, dev)
                else:
                    src = open_source(source, dev, data_root, trust_code=trust_code)
                if name and src.name != name:
                    src = dataclasses.replace(src, name=name)
                folder = analyze_source(src, root, analyses=chosen, cache_dir=cache_dir, device=dev,
                                        data_root=data_root, force=force, progress=progress, settings=settings,
                                        ood=list(ood) if ood else None)
        return Results(folder, _temporary=temporary)
    except BaseException:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def _caller_module_kept(module: "torch.nn.Module | None"):
    """The caller's module as it was after :func:`evaluate`: every submodule's training flag, and the device
    of its parameters and buffers (it is analysed in eval mode on ``device``). Restoring is cheaper than working
    on a copy: a copy duplicates every parameter (on the GPU too), restoring costs one flag per submodule and,
    only where ``device`` differs, the move back."""
    if module is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    tensors = list(module.parameters()) + list(module.buffers())
    where = tensors[0].device if tensors and len({t.device for t in tensors}) == 1 else None
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        if where is not None and any(t.device != where for t in list(module.parameters()) + list(module.buffers())):
            module.to(where)


def _chosen_analyses(analyses: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"a,b"`` or ``["a", "b"]`` as the list of registered analysis names (unknown: one line)."""
    from embedlab.analyses.runner import select_analyses

    if not isinstance(analyses, str) and not (isinstance(analyses, (list, tuple))
                                              and all(isinstance(a, str) for a in analyses)):
        raise EmbedlabError(f"analyses must be 'all', 'a,b' or a list of analysis names, got {analyses!r:.100}")

    return select_analyses(analyses if isinstance(analyses, str) else ",".join(analyses))


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _arrays_source(splits: Mapping[str, Mapping[str, Any]], classes: Sequence[str] | None, tmp: Path, name: str):
    """Arrays per split → the same Source ``embedlab analyze`` builds from an ``.npz`` holding them."""
    import numpy as np

    from embedlab.analyses.runner import open_arrays

    payload: dict[str, Any] = {}
    for split, d in splits.items():
        if not isinstance(d, Mapping):
            raise EmbedlabError(f"{split}=: expected a dict with embeddings, labels and optional logits")
        unknown = set(d) - {"embeddings", "labels", "logits"}
        if unknown:
            raise EmbedlabError(f"{split}=: unknown keys {sorted(unknown)}; expected embeddings, labels, logits")
        for key in ("embeddings", "labels"):
            if d.get(key) is None:
                raise EmbedlabError(f"{split}: {key} are missing")
        prefix = "" if split == "test" else f"{split}_"
        for key, value in d.items():
            if value is not None:
                payload[f"{prefix}{key}"] = _numpy(value, f"{split}[{key!r}]")
    if classes is not None:
        payload["classes"] = np.asarray([str(c) for c in classes])
    from embedlab.analyses.runner import safe_dir_name

    path = tmp / f"{safe_dir_name(name)}.npz"  # a name is never a path: "../x" or "/abs" stays inside tmp
    np.savez(path, **payload)
    src = open_arrays(path)
    return dataclasses.replace(src, path=Path(f"<arrays:{name}>"))


def _numpy(value: Any, where: str = "array"):
    """An array given to :func:`evaluate` as numpy: torch tensors on any device, of any float dtype (bf16 and fp16
    read as float32), sparse (made dense); one line for a meta tensor, a ragged list or objects."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise EmbedlabError(f"{where}: a tensor on the meta device holds no values")
        value = value.detach()
        if value.layout != torch.strided:
            value = value.to_dense()
        if value.is_floating_point() and value.dtype != torch.float64:
            value = value.float()  # numpy has no bfloat16
        value = value.cpu().numpy()
    elif hasattr(value, "toarray") and callable(value.toarray):  # a scipy sparse matrix
        value = value.toarray()
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise EmbedlabError(f"{where}: not a rectangular array ({str(e).splitlines()[0][:160]})") from None
    if a.dtype == object:
        raise EmbedlabError(f"{where}: an array of Python objects (ragged rows, or None inside); give a "
                            f"rectangular numeric array")
    return a


def _module_source(module: "torch.nn.Module", dataset: str, data_root: str | None, options: Mapping[str, Any],
                   name: str | None, device: str):
    """An ``nn.Module`` and a registered dataset → a Source. Embedlab models are used as they are; any other
    classifier is wrapped like an external model: its last linear layer is g, the input of g the embedding."""
    import hashlib

    import torch

    from embedlab.analyses.runner import Source
    from embedlab.data import create_dataset, without_label_noise
    from embedlab.external import _last_linear
    from embedlab.models import EmbedNet, ExternalNet

    if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        raise EmbedlabError("evaluate(module): the module is on the meta device (no weights); load its weights "
                            "first (e.g. module.to_empty(device='cpu') and load_state_dict)")
    data = create_dataset(dataset, data_root, False, **{k: auto_type(v) for k, v in options.items()})
    clean = without_label_noise(data)
    noise = None if clean is data else data.describe()["label_noise"]
    info = clean.info
    model = module
    if not isinstance(module, EmbedNet):
        model = ExternalNet(module, _last_linear(module, info.num_classes), info.input_shape)
    model = model.eval().to(device)
    from embedlab.fingerprint import module_fingerprint

    # the weights and what the network computes (its classes' source, structure and settings): two networks with
    # the same parameters and another activation are two models
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    h.update(module_fingerprint(model).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    with torch.no_grad():
        out = model(clean.split("test")[0][0].unsqueeze(0).to(device))
    if not isinstance(out, torch.Tensor):
        raise EmbedlabError(f"evaluate(module): the module returns {type(out).__name__}, not a tensor of logits "
                            f"(N, C); wrap it in a module whose forward returns the logits")
    n_out = out.shape[-1]
    if n_out != info.num_classes:
        raise EmbedlabError(f"the module outputs {n_out} classes but dataset {dataset!r} has {info.num_classes}")
    label = name or type(module).__name__
    meta = {"model": {"name": f"module:{type(module).__name__}"}, "method": {"name": "external", "options": {}},
            "dataset": {"name": dataset}}
    return Source(label, Path(f"<module:{label}>"), h.hexdigest(), meta, info.classes, model=model, data=clean,
                  label_noise=noise)


# ---------------------------------------------------------------------------------------------------- report
def report(results: Results | str | os.PathLike[str] | Iterable[Results | str | os.PathLike[str]],
           path: str | os.PathLike[str], *, format: str = "html", title: str = "embedlab report",
           force: bool = False, figures: str | os.PathLike[str] | None = None, workers: int | None = None,
           umap: Mapping[str, Any] | None = None) -> Path:
    """Write a comparative report of ``results`` (Results objects, results folders or files, study folders or
    files, or their parent folders) to ``path``: ``format`` ``html`` (self-contained, UMAP plots), ``md``
    (Markdown tables) or ``tex`` (booktabs tables). ``figures``: also write every figure as PDF and PNG into this
    folder (existing files there are replaced only with ``force``, never through a symbolic link). Neither ``path``
    nor a figure may be one of the files the report reads. ``umap``: UMAP settings shared by all models
    (n_neighbors, min_dist, seed, max_points, n_epochs)."""
    from embedlab.io import atomic_write_text
    from embedlab.reports.load import load_report_inputs

    if format not in ("html", "md", "tex"):
        raise EmbedlabError(f"report format must be html, md or tex, got {format!r}")
    out = Path(path)
    if out.is_symlink() or (out.exists() and not out.is_file()):  # a device node, FIFO, socket, folder or link
        raise EmbedlabError(f"{out} exists and is not a regular file; -o writes a new file there only in place of "
                            f"a regular file (with --force)")
    if out.exists() and not force:
        raise EmbedlabError(f"{out} already exists; choose another -o or pass --force to overwrite")
    check_writable(out.parent, out)
    if figures is not None:
        from embedlab.reports.paper_figures import check_figures_folder

        check_figures_folder(figures)
        check_writable(figures)
    items = [results] if isinstance(results, (Results, str, os.PathLike)) else list(results)
    paths = [r.path if isinstance(r, Results) else r for r in items]
    inputs = load_report_inputs(paths)
    read = _input_files(inputs)
    if out.exists() and any(p.exists() and os.path.samefile(out, p) for p in read):
        raise EmbedlabError(f"{out} is one of the report's inputs; choose another -o (--force never replaces an "
                            f"input)")
    if figures is not None:  # first: figures that cannot be placed leave no report behind either
        from embedlab.reports.paper_figures import write_figures

        write_figures(inputs.results, Path(figures), studies=inputs.studies,
                      umap_kwargs=dict(umap) if umap else None, force=force, protected=read)
    if format == "md":
        from embedlab.reports.html import render_markdown

        atomic_write_text(out, render_markdown(inputs.results, inputs.studies))
    elif format == "tex":
        from embedlab.reports.tex import render_tex

        atomic_write_text(out, render_tex(inputs.results, inputs.studies))
    else:
        from embedlab.reports.html import render_report

        render_report(inputs.results, out, title=title, studies=inputs.studies, workers=workers,
                      umap_kwargs=dict(umap) if umap else None)
    for r in inputs.results:  # after the report: an error stays one line, a success names what it could not vouch for
        if r.edited:
            import warnings

            from embedlab.errors import EmbedlabWarning

            warnings.warn(EmbedlabWarning(f"{r.path} was changed after embedlab wrote it (its digest does not match "
                                          f"its content); the report shows its numbers as they are now"),
                          stacklevel=2)
    return out


def _input_files(inputs: Any) -> list[Path]:
    """Every file a report reads: each results.json and the arrays file it names, each study file and the figures
    beside it. ``-o`` and ``--figures`` never replace one of them, even with ``force``."""
    files: list[Path] = []
    for r in inputs.results:
        name = r.results.get("arrays") if isinstance(r.results.get("arrays"), str) else None
        files += [r.path, r.path.parent / (name or "arrays.npz")]
    for st in inputs.studies:
        files += [st.path, *st.figures.values()]
    return files


# ------------------------------------------------------------------------------------------ demo, study, list
def demo(out: str | os.PathLike[str] = "embedlab-demo", *, methods: Sequence[str] = DEMO_METHODS, epochs: int = 30,
         seed: int = 0, device: str = "auto", force: bool = False, progress: bool = True) -> list[Results]:
    """Train ``methods`` on scikit-learn's digits, analyse each checkpoint and write ``out/report.html``."""
    from embedlab.checkpoint import WEIGHTS
    from embedlab.methods import METHODS
    from embedlab.recipes import load_recipe

    out = Path(out)
    target = out / "report.html"
    if target.exists() and not force:
        raise EmbedlabError(f"{target} already exists; choose another --out or pass --force to redo the demo")
    methods = [m.strip() for m in methods if m.strip()]
    if not methods:
        raise EmbedlabError("--methods: give at least one method (see `embedlab list methods`)")
    for method in methods:  # every name and run directory is checked before the first run trains
        METHODS.get(method)
        if (out / "runs" / method / WEIGHTS).exists() and not force:
            raise EmbedlabError(f"{out / 'runs' / method / WEIGHTS} already exists; choose another --out or pass "
                                f"--force to redo the demo")
    dev = resolve_device(device)
    results = []
    for method in methods:
        cfg = dataclasses.replace(load_recipe("digits").resolved(), method=method, epochs=epochs, seed=seed,
                                  device=device)
        print(f"[demo] training {method} on digits ({epochs} epochs)", flush=True)
        run = train(cfg, out / "runs" / method, force=force, progress=progress)
        results.append(evaluate(run.path, out=out / "results", cache_dir=out / "cache", device=dev, force=True,
                                progress=progress))
    report(results, target, title="embedlab demo: mixup-family methods on digits", force=True)
    return results


def study(name: str, out: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Run a registered study (``embedlab list studies``) into ``out`` and return its data (also saved as JSON
    there). Options are the study's keyword arguments; trained studies take ``config`` (a :class:`TrainConfig`)
    and, where they analyse runs, use :func:`evaluate`'s analyses."""
    from embedlab.trainers.studies import STUDIES

    entry = STUDIES.get(name)
    launcher = options.pop("launcher", None) or "none"
    jobs, slurm = options.pop("jobs", None), options.pop("slurm", None)
    if launcher != "none":  # a grid of runs through submitit: a local pool or SLURM (embedlab.launch)
        from embedlab.launch import LAUNCHERS, SlurmOptions, make_launcher

        if launcher not in LAUNCHERS:
            raise EmbedlabError(f"launcher: one of {', '.join(LAUNCHERS)}, got {launcher!r}")
        if name != "benchmark":
            raise EmbedlabError(f"launcher={launcher!r} runs benchmark grids only; study {name!r} runs here")
        if isinstance(slurm, Mapping):
            slurm = SlurmOptions(**slurm)
        options["launch"] = make_launcher(launcher, out, options, jobs=jobs or 1, slurm=slurm)
    elif jobs not in (None, 1) or slurm:
        raise EmbedlabError("jobs= and slurm= need launcher='local' or 'slurm' (the default 'none' runs the grid "
                            "here, one run after the other)")
    if entry.meta.get("analyses"):
        options.setdefault("analyze", _study_analyzer(Path(out), entry.meta["filename"], options))
    return entry.obj(out_dir=Path(out), **options)


def grid_status(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The state of every run of the benchmark grid in ``out`` (see :func:`embedlab.launch.status`)."""
    from embedlab.launch import status

    return status(out)


def study_table(name: str, data: Mapping[str, Any]) -> str:
    """The Markdown summary table a study prints when it ends (empty when it has none)."""
    from embedlab.trainers.studies import STUDIES

    table = STUDIES.get(name).meta.get("table")
    return table(data) if table else ""


def _study_analyzer(out: Path, filename: str, options: dict[str, Any]):
    """The analysis callback of studies that analyse their runs: reuses results of the same weights and
    analyses, else runs them (the composition a study cannot do itself: trainers never import analyses)."""
    from embedlab.analyses.runner import analyze_source, check_settings, open_source
    from embedlab.io import digest_ok, sha256_file

    log_line = options.get("log") or print

    chosen = _chosen_analyses(options.get("analyses", "all"))
    options["analyses"] = chosen
    settings = {k: dict(v) for k, v in (options.get("analysis_settings") or {}).items()}
    options["analysis_settings"] = settings
    check_settings(settings, chosen)
    device = resolve_device(options.get("device", "auto"))
    progress = options.get("progress", True)
    previous = _read_json(out / filename)  # the study's own file: what it analysed, and with which settings
    same = previous.get("analyses") == chosen and previous.get("analysis_settings", {}) == settings

    def analyze(ckpt: Path, name: str) -> Path:
        res = out / "results" / name / "results.json"
        if same and res.is_file() and (out / "results" / name / "arrays.npz").is_file():
            try:
                prior = json.loads(res.read_text())
                if prior["model"]["sha256"] == sha256_file(ckpt) and digest_ok(prior) and \
                        prior.get("arrays_sha256") == sha256_file(res.parent / "arrays.npz"):
                    return res.parent  # analysed before with these weights and these analyses, and unedited
                if digest_ok(prior) is not True:
                    log_line(f"{res} was changed after it was written (or predates digests): analysing {name} again")
            except (OSError, ValueError, KeyError, TypeError):
                pass
        src = dataclasses.replace(open_source(ckpt, device), name=name)
        return analyze_source(src, out / "results", analyses=chosen, cache_dir=out / "cache", device=device,
                              force=True, progress=progress, settings=settings)

    return analyze


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_plugins(kind: str) -> list[dict[str, Any]]:
    """The registered ``methods``, ``models``, ``datasets``, ``analyses`` or ``studies``, as dicts with name,
    description and metadata (for methods: the MultiMix paper's Table 1 columns)."""
    from embedlab.methods import METHODS, method_metadata

    if kind == "methods":
        return [method_metadata(e.name) for e in METHODS]
    if kind == "models":
        from embedlab.models import MODELS as reg
    elif kind == "datasets":
        from embedlab.data import DATASETS as reg
    elif kind == "analyses":
        from embedlab.analyses import ANALYSES as reg
    elif kind == "studies":
        from embedlab.trainers.studies import STUDIES as reg
    else:
        raise EmbedlabError(f"unknown kind {kind!r}; known: methods, models, datasets, analyses, studies")
    return [{"name": e.name, "description": e.description,
             **{k: list(v) if isinstance(v, tuple) else v for k, v in e.meta.items() if not callable(v)}}
            for e in reg]
