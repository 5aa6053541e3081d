"""The ``embedlab`` command: argparse over :mod:`embedlab.api` (the composition root) and nothing else."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from embedlab import api
from embedlab.errors import EmbedlabError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _number(kind: type, minimum: float, strict: bool, what: str) -> Callable[[str], Any]:
    """argparse type: a finite int/float ``> minimum`` (strict) or ``>= minimum``, else a one-line error."""

    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        ok = v > minimum if strict else v >= minimum
        if not ok or v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


_positive_int = _number(int, 0, True, "a positive integer")
_nonneg_int = _number(int, 0, False, "an integer >= 0")
_positive_float = _number(float, 0.0, True, "a positive number")
_nonneg_float = _number(float, 0.0, False, "a number >= 0")


def _int_in(lo: int, hi: int, why: str = "") -> Callable[[str], int]:
    """argparse type: an integer in ``lo .. hi`` (``why``: what the bound protects)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo} and <= {hi:,}, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo} and <= {hi:,}{why}, got {s!r}")
        return v

    return parse


def _class_counts(s: str) -> tuple[int, ...]:
    """toy-depth's --ks: comma-separated class counts 2 .. 64."""
    parse = _int_in(2, 64)
    try:
        ks = tuple(parse(p) for p in s.split(",") if p.strip())
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"class counts: {e}") from None
    if not ks:
        raise argparse.ArgumentTypeError(f"expected comma-separated class counts >= 2 and <= 64, got {s!r}")
    return ks


def _seed(s: str) -> int:
    """argparse type: a seed, an integer 0 .. 2**63 - 1 (torch takes a signed 64-bit seed)."""
    v = _nonneg_int(s)
    if v > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed 0 .. 2**63 - 1, got {s!r}")
    return v


def _int_list(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in s.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


# ------------------------------------------------------------------------------------------------- commands
def _train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """The training flags given on the command line, as TrainConfig keys (options parsed from KEY=VALUE)."""
    flags = {"dataset": a.dataset, "data_root": a.data_root, "model": a.model, "method": a.method, "epochs": a.epochs,
             "batch_size": a.batch_size, "optimizer": a.optimizer, "lr": a.lr, "momentum": a.momentum,
             "weight_decay": a.weight_decay, "schedule": a.schedule, "milestones": a.milestones,
             "lr_gamma": a.lr_gamma, "seed": a.seed, "device": a.device, "num_workers": a.workers, "amp": a.amp,
             "channels_last": a.channels_last, "compile": a.compile, "deterministic": a.deterministic,
             "download": True if a.download else None}
    for key, items in (("dataset_options", a.data_opt), ("model_options", a.model_opt), ("method_options", a.method_opt)):
        if items:
            flags[key] = api.parse_assignments(items, f"--{key.split('_')[0]}-opt")
    return flags


def _train_config(a: argparse.Namespace, saved: dict[str, Any] | None = None) -> Any:
    """The config ``train`` resolves from these arguments (over ``saved``, a run being resumed)."""
    return api.train_config(a.config, recipe=a.recipe, saved=saved, overrides=_train_overrides(a), assignments=a.set,
                            mix_layer=a.mix_layer)


def cmd_train(a: argparse.Namespace) -> int:
    """The resolved config. Layers, lowest first: TrainConfig defaults < the run being resumed < ``--recipe`` <
    ``--config`` < flags and ``--set`` (``--set`` last)."""
    if a.seeds is not None:
        if a.seed is not None:
            raise EmbedlabError("give either --seed or --seeds, not both")
        api.check_seeds(a.seeds, ",".join(map(str, a.seeds)))
    if a.resume and a.force:
        raise EmbedlabError("--resume continues a run and --force overwrites it: give only one of them")
    api.train(a.config, a.out, recipe=a.recipe, overrides=_train_overrides(a), assignments=a.set,
              mix_layer=a.mix_layer, seeds=a.seeds, resume=a.resume, force=a.force, progress=not a.no_progress)
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    if not a.models:
        raise EmbedlabError("analyze: give at least one checkpoint, model spec or arrays file")
    ood = [s.strip() for s in a.ood.split(",") if s.strip()] if a.ood else None
    settings = api.analysis_settings(a.opt)
    for m in a.models:
        res = api.evaluate(m, out=a.out, analyses=a.analyses, settings=settings, ood=ood, device=a.device,
                           cache_dir=a.cache_dir, data_root=a.data_root, force=a.force, progress=not a.no_progress,
                           trust_code=a.trust_code)
        print(f"analysed {m} → {res.path / 'results.json'}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    out = api.report(a.results, a.output, format=a.format, title=a.title, force=a.force, figures=a.figures,
                     workers=a.workers or None,
                     umap={"n_neighbors": a.umap_neighbors, "min_dist": a.umap_min_dist, "seed": a.seed,
                           "max_points": a.max_points or None, "n_epochs": a.umap_epochs})
    print(f"wrote {out}")
    if a.figures:
        print(f"wrote figures to {a.figures}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    results = api.demo(a.out, methods=methods, epochs=a.epochs, seed=a.seed, device=a.device, force=a.force,
                       progress=not a.no_progress)
    print(f"\n{'method':<16} {'test acc':>9} {'kNN acc':>9} {'ECE':>7}")
    for r in results:
        m = r.metrics
        print(f"{r.name:<16} {m['accuracy']:>9.4f} {m['knn_accuracy']:>9.4f} {m['ece']:>7.4f}")
    print(f"\nwrote {Path(a.out) / 'report.html'} in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_study(a: argparse.Namespace) -> int:
    if a.folder and a.study != "status":
        raise EmbedlabError(f"study {a.study}: unexpected argument {a.folder!r}; the output folder is --out")
    if not (a.out or a.folder):
        raise EmbedlabError("study: --out is required (for status: the grid's folder, as `embedlab study status OUT`)")
    out = Path(a.out or a.folder)
    if a.study == "toy-depth":
        ks = a.ks
        res = api.study("toy-depth", out, realisations_per_k=a.realisations, ks=ks, epochs=a.epochs or 20,
                        seed=a.seed, progress=not a.no_progress, threads=a.threads, precision=a.precision,
                        optimizer=a.optimizer, lr=a.lr, n_train=a.n_train, mean_range=a.mean_range)
        print(json.dumps(res.get("summary", {}), indent=2, default=str)[:4000])
        print(f"wrote {out / 'toy_depth.json'}")
        return 0
    if a.study == "status":
        rows = api.grid_status(out)
        for r in rows:
            print(f"{r['name']}\t{r['state']}\tepoch {r['epoch']}/{r['epochs']}")
        counts = {s: sum(r["state"] == s for r in rows) for s in
                  ("done", "running", "trained", "interrupted", "pending")}
        print(", ".join(f"{k} {v}" for k, v in counts.items() if v) + f" (of {len(rows)} runs)")
        return 0
    cfg = _study_config(a)
    seeds = _seed_list(a.seeds)
    if a.study == "benchmark":
        launch: dict[str, Any] = {}
        if a.launcher != "none":
            slurm = {"partition": a.slurm_partition, "time_min": a.slurm_time, "gpus_per_job": a.slurm_gpus_per_job,
                     "cpus_per_job": a.slurm_cpus_per_job, "mem_gb": a.slurm_mem,
                     "additional": api.parse_assignments(a.slurm_additional, "--slurm-additional")
                     if a.slurm_additional else {}}
            launch = {"launcher": a.launcher, "jobs": a.jobs, "slurm": slurm if a.launcher == "slurm" else None}
        elif a.jobs != 1:
            raise EmbedlabError("--jobs needs --launcher local or slurm (--launcher none runs the grid here, one run "
                                "after the other)")
        res = api.study("benchmark", out, config=cfg, methods=a.methods, seeds=seeds, baseline=a.baseline,
                        analyses=a.analyses, analysis_settings=api.analysis_settings(a.opt), device=a.device,
                        progress=not a.no_progress, **launch)
        print(api.study_table("benchmark", res))
        print(f"wrote {out / 'benchmark.json'}")
        if not a.no_report:
            api.report([out / "results" / name for runs in res["results"].values() for name in runs.values()]
                       + [out / "benchmark.json"], out / "report.html", force=True,
                       title=a.title or f"embedlab benchmark: {cfg.dataset}")
            print(f"wrote {out / 'report.html'}")
        return 0
    variants = [v.strip() for v in a.variants.split(";")] if a.variants else None
    res = api.study("confmix", out, config=cfg, seeds=seeds, variants=variants, half_life=a.half_life,
                    warmup=a.warmup, progress=not a.no_progress)
    print(api.study_table("confmix", res))
    print(f"wrote {out / 'confmix.json'}")
    return 0


def _study_config(a: argparse.Namespace) -> Any:
    """The base training config of a trained study: recipe < --dataset/--data-root/--epochs/--subset/--data-opt <
    --set."""
    recipe = a.recipe or ("digits" if a.study == "benchmark" else "cifar10-small-cnn")
    cfg = api.train_config(recipe=recipe)
    ds_opts = dict(cfg.dataset_options)
    if a.subset:
        ds_opts["train_subset"] = a.subset
    if a.data_opt:
        ds_opts.update(api.parse_assignments(a.data_opt, "--data-opt"))
    overrides = {"device": a.device, "dataset": a.dataset, "data_root": a.data_root, "epochs": a.epochs or None,
                 "dataset_options": ds_opts}
    return api.train_config(cfg, overrides=overrides, assignments=a.set)


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise EmbedlabError(f"--seeds: expected comma-separated integers >= 0, got {text!r}") from None
    return api.check_seeds(seeds, text)


def cmd_list(a: argparse.Namespace) -> int:
    rows = api.list_plugins(a.kind)
    if a.json:
        print(json.dumps(rows, indent=2, default=list))
    elif a.kind == "methods":
        cols = ("name", "space", "loss_terms", "examples_per_mix", "factor_distribution")
        heads = ("method", "space", "loss terms/batch", "examples/mix", "interpolation factors")
        w = [max(len(h), *(len(str(r[c])) for r in rows)) for c, h in zip(cols, heads)]
        print("  ".join(h.ljust(n) for h, n in zip(heads, w)))
        for r in rows:
            print("  ".join(str(r[c]).ljust(n) for c, n in zip(cols, w)))
    else:
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{w}}  {r['description']}")
    return 0


# --------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="embedlab", description="Train classifiers with mixup-family methods and study their embedding "
                "spaces: train → analyze → report.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str, desc: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=desc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sp.set_defaults(func=fn)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        return sp

    from embedlab.config import AMP_MODES, TRAIN_KEYS  # names for the help text only
    from embedlab.recipes import recipe_names

    t = add("train", cmd_train, "train one model with a mixing method",
            "Train a classifier with a mixing method and write a self-describing run directory "
            "(OUT/model.safetensors: weights + JSON metadata; OUT/best.safetensors; OUT/meta.json; OUT/metrics.jsonl; "
            "OUT/train_state.pt for --resume; OUT/tensorboard/). The config is layered, lowest first: built-in "
            "defaults (shown in brackets) < --recipe < --config < the flags below and --set. Multi-GPU: "
            "torchrun --nproc_per_node=N -m embedlab train ... (one process per GPU; batch size, m and n per process). "
            "See docs/TRAINING.md.")
    t.add_argument("--recipe", metavar="NAME|PATH",
                   help=f"start from a training recipe: {', '.join(recipe_names())} (JSON files in "
                        "embedlab/recipes/ to read and copy), or the path of a recipe .json file")
    t.add_argument("--config",
                   help="JSON file with TrainConfig keys, a recipe file, or a run's meta.json, applied over --recipe")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config key, over the recipe, --config and the flags (repeatable): e.g. epochs=5, "
                        "milestones=100,150, model=null, method_options.n=500, dataset_options.image_size=64. Keys: "
                        + ", ".join(TRAIN_KEYS))
    t.add_argument("--dataset", help="registered dataset (see `embedlab list datasets`) [digits]")
    t.add_argument("--data-root", help="folder holding the dataset files (torchvision datasets, imagefolder)")
    t.add_argument("--download", action="store_true", help="allow torchvision to download the dataset into --data-root")
    t.add_argument("--data-opt", action="append", metavar="KEY=VALUE", help="dataset option, e.g. K=4 for toy-gmm (repeatable)")
    t.add_argument("--model", help="registered model (see `embedlab list models`), or any torchvision/timm classifier "
                                   "as tv:NAME / timm:NAME [the dataset's default]")
    t.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. width=64 (repeatable)")
    t.add_argument("--method", help="mixing method (see `embedlab list methods`) [erm]")
    t.add_argument("--method-opt", "-O", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. n=1000, alpha=1, attention=cam (repeatable)")
    t.add_argument("--mix-layer", metavar="NAME",
                   help="where manifold-style methods mix: stage depths (0 = input) or module names, e.g. layer2 "
                        "for --model tv:resnet50 (comma-separated: one drawn per batch)")
    t.add_argument("--epochs", type=_positive_int, help="training epochs [30]")
    t.add_argument("--batch-size", type=_positive_int, help="mini-batch size b per process [64]")
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help="optimizer [sgd]")
    t.add_argument("--lr", type=_positive_float,
                   help="learning rate (not rescaled with the number of processes) [0.05]")
    t.add_argument("--momentum", type=_nonneg_float, help="SGD momentum [0.9]")
    t.add_argument("--weight-decay", type=_nonneg_float, help="weight decay [5e-4]")
    t.add_argument("--schedule", choices=("cosine", "step", "constant"), help="learning-rate schedule [cosine]")
    t.add_argument("--milestones", type=_int_list, help="epochs at which the step schedule multiplies lr by --lr-gamma")
    t.add_argument("--lr-gamma", type=_positive_float, help="step-schedule factor [0.1]")
    t.add_argument("--seed", type=_seed, help="seed for initialisation, shuffling and mixing [0]")
    t.add_argument("--seeds", type=_int_list, metavar="S1,S2,...",
                   help="train one run per seed, into OUT/seed<S> (instead of --seed)")
    t.add_argument("--device", help="auto, cpu or cuda[:N]; under torchrun each process uses cuda:LOCAL_RANK [auto]")
    t.add_argument("--workers", type=_nonneg_int, help="DataLoader worker processes per process [0]")
    t.add_argument("--amp", choices=AMP_MODES, help="mixed precision: auto = bf16 autocast on CUDA, off on CPU [auto]")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels-last memory format for images and weights [on for CUDA, off on CPU]")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile each model stage (first epoch slower) [off]")
    t.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   help="deterministic algorithms only: --resume then ends bit-identical to an uninterrupted run "
                        "(slower on CUDA) [off]")
    t.add_argument("--out", required=True, help="run directory to write (with --seeds: the parent of seed<S>/)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last completed epoch (OUT/train_state.pt), with the "
                        "same config (a different one is an error naming the keys); starts the run if --out has none")
    t.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    an = add("analyze", cmd_analyze, "extract embeddings and compute metrics for checkpoints",
             "For each checkpoint (run directory or .safetensors file): extract embeddings of the needed splits "
             "(cached by model content hash, dataset and split), run the analyses, and write "
             "OUT/<run name>/results.json and arrays.npz.")
    an.add_argument("models", nargs="*", metavar="MODEL",
                    help="run directories or .safetensors checkpoints; external models as a JSON spec (.json, kind: "
                         "torchvision/timm architecture + weights, an exported program (.pt2, torch.export), a "
                         "Hugging Face save_pretrained folder of an image classifier or encoder, or a sentence-transformers "
                         "folder on a text dataset given as train/test .jsonl/.csv/.tsv files (dataset: text), "
                         "TorchScript, or package.module:factory); precomputed "
                         "embeddings as .npz (embeddings, labels, optional logits, classes)")
    an.add_argument("--out", required=True, help="results directory")
    an.add_argument("--analyses", default="all", help="'all' or a comma-separated list (see `embedlab list analyses`)")
    an.add_argument("--opt", action="append", metavar="ANALYSIS.KEY=VALUE",
                    help="an analysis setting, e.g. knn.k=50, robustness.max_examples=1000 (attacked images, default "
                         "500), ood.max_examples=5000 (ODIN inputs per set, default 2000) (repeatable)")
    an.add_argument("--ood", metavar="SETS",
                    help="OOD sets for the ood analyses, comma-separated: gaussian, uniform, heldout (models trained "
                         "with --data-opt classes=...), or a dataset name read from --data-root "
                         "[heldout where it applies, gaussian, uniform]")
    an.add_argument("--cache-dir", help="embedding cache (default $EMBEDLAB_CACHE or ~/.cache/embedlab)")
    an.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    an.add_argument("--data-root", help="override the dataset root recorded in the checkpoint")
    an.add_argument("--force", action="store_true", help="replace results of a different model with the same name")
    an.add_argument("--trust-code", action="store_true",
                    help="allow model specs of kind factory (imports and calls package.module:function), "
                         "torchscript (runs the TorchScript file) and export (torch.export.load unpickles parts of "
                         "the .pt2): loading them can run their code, so pass this only for files you trust; "
                         "without it such specs are refused")
    an.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = add("report", cmd_report, "write a self-contained comparative HTML report",
            "Read results written by `embedlab analyze` (results dirs, results.json files, or parent folders) and "
            "study results (a folder holding toy_depth.json or confmix.json, or a JSON file with \"kind\": "
            "\"embedlab.study\"), and "
            "write one self-contained HTML file (no network requests when opened) or Markdown tables. Runs that "
            "differ only by their training seed are shown as one model, mean ± std over seeds.")
    r.add_argument("results", nargs="+", metavar="RESULTS",
                   help="results directories, results.json files, study folders or files, or their parent folder")
    r.add_argument("-o", "--output", required=True, help="output file")
    r.add_argument("--format", choices=("html", "md", "tex"), default="html",
                   help="html: the self-contained report; md: Markdown summary tables (with the studies' tables); "
                        "tex: LaTeX booktabs tables for a paper (mean ± std over seeds, best in bold; benchmark "
                        "studies' paired differences with 95 %% intervals)")
    r.add_argument("--figures", metavar="DIR",
                   help="also write every figure as PDF and PNG into DIR (matplotlib/seaborn), for a paper")
    r.add_argument("--title", default="embedlab report", help="report title")
    r.add_argument("--umap-neighbors", type=_positive_int, default=15, help="UMAP n_neighbors (same for all models)")
    r.add_argument("--umap-min-dist", type=_nonneg_float, default=0.1, help="UMAP min_dist")
    r.add_argument("--umap-epochs", type=_positive_int, default=200, help="UMAP layout epochs")
    r.add_argument("--max-points", type=_nonneg_int, default=10000,
                   help="subsample each UMAP to at most this many points (0: every point); stated on the figure")
    r.add_argument("--seed", type=_seed, default=0, help="UMAP and subsampling seed")
    r.add_argument("--workers", type=_nonneg_int, default=0,
                   help="processes computing the UMAP layouts (0: automatic, several only for 20,000+ points in all "
                        "and on idle CPU cores); the layouts do not depend on it")
    r.add_argument("--force", action="store_true",
                   help="overwrite an existing output file, and existing figures in --figures DIR (never an input "
                        "of the report, never through a symbolic link)")

    d = add("demo", cmd_demo, "train, analyse and report five methods on digits",
            "Train erm, mixup, manifold_mixup, multimix and dense_multimix on scikit-learn's digits (shipped, no "
            "download), analyse each checkpoint and write OUT/report.html. About 1–5 minutes on 2 CPU cores, "
            "depending on the CPU.")
    d.add_argument("--out", default="embedlab-demo", help="output directory")
    d.add_argument("--methods", default=",".join(api.DEMO_METHODS), help="comma-separated methods to compare")
    d.add_argument("--epochs", type=_positive_int, default=30, help="epochs per method")
    d.add_argument("--seed", type=_seed, default=0, help="seed")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    d.add_argument("--force", action="store_true", help="redo the demo over an existing OUT")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    st = add("study", cmd_study, "run a benchmark grid or one of seed 002's studies",
             "benchmark: a method × seed grid under one protocol (any recipe, dataset, model, --set), resumable run by "
             "run; every run is analysed (--analyses) and the study writes OUT/benchmark.json (per metric: mean, std "
             "and 95 % interval over seeds, and the paired difference to --baseline with its 95 % Student-t "
             "interval) and OUT/report.html. Method specs take options: "
             "--methods 'erm,mixup,multimix[p=1;alpha=0.5]'. See docs/RESULTS.md. "
             "toy-depth: seed 002 §3 — mixup at depths 0–3 vs baseline on 400 Gaussian-mixture datasets, excess risk "
             "over the exact Bayes classifier, by quartile of the normalised MMLB (vectorised over datasets; the full "
             "protocol took 15 min on 2 cores with AMX in bf16, 83 min on 2 AVX2-only cores in fp32). confmix: "
             "seed 002 §4 — ConfMix, ½-ConfMix, α = 0.5 and α schedules 0→1 / 1→0, input and manifold, against the ERM baseline on CIFAR-10 with the small CNN, over seeds. "
             "Each writes a JSON that `embedlab report` renders as its own section. See docs/STUDIES.md.")
    st.add_argument("study", choices=("benchmark", "toy-depth", "confmix", "status"),
                    help="status: print the state of every run of the grid in --out (works while it runs)")
    st.add_argument("folder", nargs="?", help="status: the grid's folder (its --out)")
    st.add_argument("--out", help="output directory (required)")
    st.add_argument("--seed", type=_seed, default=0, help="toy-depth: seed of the datasets and models")
    st.add_argument("--realisations", type=_int_in(1, 10_000, " (datasets per K, vectorised in memory)"),
                    default=100, help="toy-depth: datasets per K (at most 10,000)")
    st.add_argument("--ks", type=_class_counts, default=(2, 3, 4, 5),
                    help="toy-depth: class counts K, comma-separated, each 2 .. 64")
    st.add_argument("--threads", type=_positive_int, default=None, help="toy-depth: torch CPU threads")
    st.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="toy-depth: precision of the hidden-to-hidden layers (float32 master weights and Adam either "
                         "way); auto = bf16 on CPUs with native bfloat16 matrix units (AMX or AVX512-BF16), where it "
                         "is 1.25-1.5x faster, fp32 elsewhere, where emulated bf16 is far slower [auto]")
    st.add_argument("--epochs", type=_positive_int, default=None,
                    help="epochs per model (toy-depth default 20; benchmark and confmix: the recipe's)")
    st.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                    help="toy-depth: optimiser of every MLP: adam (betas 0.9, 0.999, eps 1e-8) or sgd (momentum 0.9, "
                         "no weight decay) [adam]")
    st.add_argument("--lr", type=_positive_float, default=1e-3, help="toy-depth: learning rate [0.001]")
    st.add_argument("--n-train", type=_int_in(50, 1_000_000, " (at least one batch of 50; vectorised in memory)"),
                    default=1000,
                    help="toy-depth: training points per dataset, at least one batch of 50 [1000]")
    st.add_argument("--mean-range", type=_positive_float, default=1.0,
                    help="toy-depth: component means ~ U([-a, a]^2) for a = this value, with sigma ~ U(0.05, 0.5) "
                         "unchanged, so a larger a spreads the clusters out relative to their width [1]")
    st.add_argument("--recipe", help="benchmark/confmix: training recipe (see docs/TRAINING.md) [benchmark: digits; "
                                     "confmix: cifar10-small-cnn]")
    st.add_argument("--dataset", help="benchmark/confmix: dataset (e.g. imagefolder for a JPEG copy of CIFAR-10) "
                                      "[recipe's]")
    st.add_argument("--data-root", help="benchmark/confmix: dataset root")
    st.add_argument("--subset", type=_positive_int,
                    help="benchmark/confmix: train on a seeded subset of this many images")
    st.add_argument("--data-opt", action="append", metavar="KEY=VALUE",
                    help="benchmark/confmix: dataset option (repeatable), e.g. label_noise=0.4")
    st.add_argument("--seeds", default="0,1,2", help="benchmark/confmix: comma-separated seeds")
    st.add_argument("--methods", default="erm,mixup,manifold_mixup,multimix,dense_multimix",
                    help="benchmark: comma-separated method specs NAME or NAME[key=value;...] (method options as with "
                         "train -O), e.g. 'erm,multimix[p=1;alpha=0.5]'; `embedlab list methods` names them all")
    st.add_argument("--baseline", default="erm",
                    help="benchmark: the --methods entry that paired differences are taken against, or none")
    st.add_argument("--analyses", default="all",
                    help="benchmark: analyses run on every checkpoint, 'all' or a comma-separated list (see "
                         "`embedlab list analyses`)")
    st.add_argument("--opt", action="append", metavar="ANALYSIS.KEY=VALUE",
                    help="benchmark: analysis setting (repeatable), as in `embedlab analyze --opt`")
    st.add_argument("--launcher", choices=("none", "local", "slurm"), default="none",
                    help="benchmark: none = one run after the other in this process; local = up to --jobs runs at "
                         "once on this machine (one GPU per job, or the CPU cores split between jobs); slurm = a "
                         "SLURM job array, requeued on pre-emption. Both through submitit (pip install "
                         "'embedlab[cluster]'); job logs in OUT/.submitit/. Re-running the command submits only the "
                         "runs that are not finished")
    st.add_argument("--jobs", type=_positive_int, default=1, help="benchmark: runs at once with --launcher")
    st.add_argument("--slurm-partition", help="benchmark --launcher slurm: partition")
    st.add_argument("--slurm-time", type=_positive_int, default=24 * 60,
                    help="benchmark --launcher slurm: time limit per job in minutes (a run that hits it is "
                         "requeued and resumes)")
    st.add_argument("--slurm-gpus-per-job", type=_nonneg_int, default=1, help="--launcher slurm: GPUs per job")
    st.add_argument("--slurm-cpus-per-job", type=_positive_int, default=8, help="--launcher slurm: CPUs per job")
    st.add_argument("--slurm-mem", type=_positive_float, default=None, help="--launcher slurm: memory per job in GB")
    st.add_argument("--slurm-additional", action="append", metavar="KEY=VALUE",
                    help="--launcher slurm: any further #SBATCH key (repeatable), e.g. qos=high, account=lab")
    st.add_argument("--title", help="benchmark: report title")
    st.add_argument("--no-report", action="store_true", help="benchmark: write benchmark.json only, no report.html")
    st.add_argument("--variants", help="confmix: ';'-separated variant names (default: all; the baseline always runs)")
    st.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="benchmark/confmix: set any training config key over the recipe and flags (repeatable), as "
                         "in `embedlab train --set`: e.g. num_workers=1, lr=0.0005; method keys are set per method")
    st.add_argument("--half-life", type=_positive_float,
                    help="confmix: half-life H of the α schedules in epochs (default: epochs/2, the paper's 25 at 50)")
    st.add_argument("--warmup", type=_nonneg_int,
                    help="confmix: ERM epochs M before ConfMix mixes (default: max(1, round(epochs/10)), the "
                         "paper's 5 at 50)")
    st.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    st.add_argument("--no-progress", action="store_true", help="no progress bars")

    li = add("list", cmd_list, "list registered methods, models, datasets, analyses or studies",
             "List registered plug-ins. For methods, the table gives the MultiMix paper's Table 1 columns.")
    li.add_argument("kind", choices=("methods", "models", "datasets", "analyses", "studies"))
    li.add_argument("--json", action="store_true", help="machine-readable output with options and defaults")
    return p


def _one_line_warnings() -> None:
    """embedlab's own warnings as ``embedlab: warning: MESSAGE`` (one line); others as Python prints them."""
    import warnings

    from embedlab.errors import EmbedlabWarning

    default = warnings.showwarning
    if getattr(default, "embedlab", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, EmbedlabWarning):
            sys.stderr.write(f"embedlab: warning: {' '.join(str(message).split())}\n")
        else:
            default(message, category, filename, lineno, file, line)

    show.embedlab = True  # type: ignore[attr-defined]
    warnings.showwarning = show


OUT_OF_MEMORY = ("out of memory: lower what you asked for (--batch-size; model options such as width, depth or "
                 "num_classes; method options such as MultiMix n; analysis settings such as max_examples or n_bins; "
                 "--data-opt image_size; study sizes such as --realisations or --n-train) or use a machine with "
                 "more memory")


def _out_of_memory(e: BaseException) -> bool:
    """torch's allocator failing (``DefaultCPUAllocator: not enough memory``, CUDA out of memory)."""
    msg = str(e)
    return any(m in msg for m in ("not enough memory", "DefaultCPUAllocator", "out of memory",
                                  "can't allocate memory"))


def _worker_message(msg: str) -> str:
    """An embedlab error raised in a DataLoader worker comes back as ``Caught EmbedlabError in DataLoader worker
    process 0.`` plus the worker's traceback: its own message is the last line."""
    if "\nOriginal Traceback" not in msg:
        return msg
    last = msg.strip().splitlines()[-1]
    return last.split("EmbedlabError: ", 1)[-1]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        return args.func(args)
    except EmbedlabError as e:
        if args.debug:
            raise
        sys.stderr.write(f"embedlab: error: {_worker_message(str(e))}\n")
        return 2
    except MemoryError:  # an allocation no bound caught: the sizes asked for, not a bug
        if args.debug:
            raise
        sys.stderr.write(f"embedlab: error: {OUT_OF_MEMORY}\n")
        return 2
    except RuntimeError as e:
        if args.debug or not _out_of_memory(e):
            raise
        sys.stderr.write(f"embedlab: error: {OUT_OF_MEMORY} ({' '.join(str(e).split())[:160]})\n")
        return 2
    except OSError as e:  # the machine, not the input: disk full, permission denied, ...
        if args.debug:
            raise
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else (str(e).strip() or type(e).__name__)
        sys.stderr.write(f"embedlab: error: {what.splitlines()[0]}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("embedlab: interrupted\n")
        return 130
