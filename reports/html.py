"""Render loaded results as one self-contained HTML report or as Markdown tables.

The HTML file holds everything inline: CSS, SVG figures, PNG images as ``data:`` URIs, the UMAP points as JSON and
one script that draws them on canvases and shows a tooltip (class, thumbnail) on hover. Its Content-Security-Policy
forbids every network load (``default-src 'none'``). Every user-provided string reaches the page escaped: through
Jinja's autoescape, :func:`markupsafe.escape` in :mod:`embedlab.reports.svg`, or :func:`embedlab.reports.figures.json_for_script`
in the JSON data, which the script only ever writes as text.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write_text
from embedlab.reports import figures as F
from embedlab.reports.aggregate import EXECUTION_KEYS, Group, group_results
from embedlab.reports.load import ModelResult, StudyResult
from embedlab.reports.studies import study_section
from embedlab.reports.tables import (MISSING, Section, format_sig, label_noise_text, markdown_table, md_escape,
                                     section_info, summary_sections)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
SHORT_VERSIONS = ("torch", "embedlab")  # shown in the runs table; all versions are in each run's details
DEFAULT_UMAP = F.DEFAULT_UMAP
UMAP_OPTIONS = F.UMAP_OPTIONS

# the page's fixed section ids; a figure section whose id would collide gets a suffix
RESERVED_IDS = ("summary", "embeddings", "confusion", "training", "studies", "runs", "provenance", "thumb-atlases")

__all__ = ["DEFAULT_UMAP", "build_context", "format_sig", "render_markdown", "render_report"]


# --------------------------------------------------------------------------------------------- run metadata


def _format_value(v: Any) -> str:
    if v is None or v == "" or v == {} or v == []:
        return MISSING
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return format_sig(v) if not v.is_integer() else str(v)
    return json.dumps(v, sort_keys=False, ensure_ascii=False)


def _format_options(opts: Any) -> str:
    if isinstance(opts, Mapping):
        return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                         for k, v in opts.items()) or MISSING
    return _format_value(opts)


def _named(entry: Any) -> tuple[Any, Any]:
    """Checkpoint metadata stores ``{"name": …, "options": {…}}`` for the method, the model and the dataset."""
    if isinstance(entry, Mapping):
        return entry.get("name"), entry.get("options")
    return entry, None


def _joined(values: Sequence[str]) -> str:
    unique = list(dict.fromkeys(v for v in values if v and v != MISSING))
    return "; ".join(unique) or MISSING


def _meta_row(g: Group) -> dict[str, Any]:
    r = g.first
    meta, config = r.meta, r.config
    method, method_opts = _named(meta.get("method"))
    arch, arch_opts = _named(meta.get("model"))
    dataset, _ = _named(meta.get("dataset"))
    arch_text = _format_value(arch) + (f" ({_format_options(arch_opts)})" if arch_opts else "")
    ds_opts = config.get("dataset_options")
    dataset_text = _format_value(dataset) + (f" ({_format_options(ds_opts)})" if ds_opts else "")
    epochs = []
    best = []
    for m in g.members:
        mc = m.config
        epochs.append(_format_value(mc.get("epochs", m.meta.get("epochs"))))
        b = m.meta.get("best")
        if isinstance(b, Mapping) and isinstance(b.get("epoch"), int):
            acc = b.get("val_accuracy")
            best.append(f"{b['epoch']}" + (f" ({acc:.4f})" if isinstance(acc, float) else ""))
    hardware, platforms, versions, short = [], [], [], []
    for m in g.members:
        hw = m.meta.get("hardware")
        if isinstance(hw, Mapping):
            hardware.append(", ".join(f"{k}: {v}" for k, v in hw.items() if k != "platform" and v not in (None, "")))
            platforms.append(str(hw.get("platform") or ""))
        ver = m.meta.get("versions") or m.results.get("versions")
        if isinstance(ver, Mapping):
            versions.append(", ".join(f"{k} {v}" for k, v in ver.items()))
            short.append(", ".join(f"{k} {ver[k]}" for k in SHORT_VERSIONS if k in ver))
    recipe = [(k, _format_value(v)) for k, v in config.items() if k not in EXECUTION_KEYS]
    skipped = {}
    for m in g.members:
        for analysis, reason in m.skipped.items():
            skipped.setdefault(analysis, reason)
    seeds = [s for s in g.seeds if s is not None]
    return {
        "name": g.name,
        "method": _format_value(method) + (f" [{meta['method']['variant']}]" if isinstance(meta.get("method"), Mapping)
                                            and meta["method"].get("variant") else ""),
        "options": _format_options(method_opts),
        "architecture": arch_text,
        "dataset": dataset_text,
        "label_noise": _group_label_noise(g),
        "seeds": ", ".join(map(str, seeds)) or MISSING,
        "n_seeds": g.n,
        "epochs": _joined(epochs),
        "best": "; ".join(best) or MISSING,
        "hardware": _joined(hardware),
        "versions": _joined(versions),
        "versions_short": _joined(short),
        "platform": _joined(platforms) if any(platforms) else "",
        "recipe": recipe,
        "skipped": sorted(skipped.items()),
    }


LABEL_NOISE_NOTE = ("Label noise: the fraction of training labels flipped (val and test labels are clean); analyses "
                    "measure against the clean labels.")


def _group_label_noise(g: Group) -> str:
    """The label noise of a group's runs, e.g. ``"40 % symmetric, seed 0 (flipped 39.9 %)"``; "" when none has it."""
    return "; ".join(dict.fromkeys(t for m in g.members if (t := label_noise_text(m.label_noise))))


def _provenance_row(r: ModelResult, group: str) -> dict[str, str]:
    model = r.results.get("model") or {}
    sha = str(model.get("sha256") or "")
    versions = r.results.get("versions")
    return {
        "name": r.name,
        "group": group,
        "seed": _format_value(r.seed),
        "results": str(r.path),
        "source": _format_value(model.get("source")),
        "sha256": sha,
        "sha256_short": sha[:12] if sha else MISSING,
        "created": _format_value(r.results.get("created_utc")),
        "versions": _format_options(versions) if isinstance(versions, Mapping) else MISSING,
    }


def _dataset_label(r: ModelResult) -> str:
    ds = r.dataset
    name = str(ds.get("name") or "unknown dataset")
    split = ds.get("split")
    return f"{name} / {split}" if split else name


# --------------------------------------------------------------------------------------------- page


def _unique_id(key: str, taken: set[str]) -> str:
    """An HTML id for section ``key`` (lower case, ``-`` for every run of other characters), unique in ``taken``."""
    base = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "figures"
    if base[0].isdigit() or base.startswith(("metrics-", "umap-", "atlas-")):
        base = f"fig-{base}"
    candidate, i = base, 2
    while candidate in taken:
        candidate, i = f"{base}-{i}", i + 1
    taken.add(candidate)
    return candidate



@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,  # explicit: select_autoescape() would not match the ".html.j2" suffix
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_context(results: Sequence[ModelResult], *, title: str = "embedlab report",
                  umap_kwargs: Mapping[str, Any] | None = None, generated_at: datetime | None = None,
                  studies: Sequence[StudyResult] = (), workers: int | None = None) -> dict[str, Any]:
    """Everything the template renders: tables, figures and metadata for ``results`` grouped over seeds.
    ``workers``: processes for the UMAP layouts (None: several only when there are many points)."""
    settings = F.umap_settings(umap_kwargs)
    generated = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    groups = group_results(results)
    colors = F.model_colors(groups)
    sections: list[Section] = summary_sections(groups)
    figure_sections = F.figure_sections(groups, colors, section_info(groups))  # malformed plots fail before UMAP
    taken = set(RESERVED_IDS)
    for fs in figure_sections:
        fs["id"] = _unique_id(fs["key"], taken)
    atlases = F.Atlases.empty()
    layouts = F.group_layouts(groups, settings, workers)
    umaps = [F.umap_figure(g, settings, i, atlases, layout) for i, (g, layout) in enumerate(zip(groups, layouts))]
    datasets = list(dict.fromkeys(_dataset_label(r) for r in results))
    sizes = sorted({int(n) for r in results if isinstance(n := r.dataset.get("num_examples"), int)})

    def figure(analysis: str, build: Any, *args: Any) -> Any:
        """A figure from hand-edited or damaged plot data is one line naming the results, not a traceback."""
        try:
            return build(*args)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as e:
            files = ", ".join(dict.fromkeys(str(r.path) for r in results))
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise EmbedlabError(f"malformed {analysis!r} plot data in {files}: {why}") from e

    ctx: dict[str, Any] = {
        "title": title,
        "generated": generated.strftime("%Y-%m-%d %H:%M UTC"),
        "n_models": len(groups),
        "n_results": len(results),
        "any_seeds": any(g.n > 1 for g in groups),
        "datasets": datasets,
        "num_examples": ", ".join(f"{s:,}" for s in sizes),
        "sections": sections,
        "model_legend": [(g.name, colors[g.name]) for g in groups],
        "meta_rows": (meta_rows := [_meta_row(g) for g in groups]),
        "any_label_noise": any(m["label_noise"] for m in meta_rows),
        "label_noise_note": LABEL_NOISE_NOTE,
        "provenance_rows": [_provenance_row(m, g.name) for g in groups for m in g.members],
        "umaps": umaps,
        "atlases": F.json_for_script(atlases.items),
        "umap_desc": F.umap_description(settings),
        "figure_sections": figure_sections,
        "confusion": [f for g in groups if (f := figure("confusion", F.confusion_figure, g)) is not None],
        "training": figure("training history", F.training_figures, groups, colors),
        "studies": [study_section(s) for s in studies],
    }
    nav = [("summary", "Summary")] if sections else []
    nav += [("embeddings", "UMAP")] if umaps else []
    nav += [(fs["id"], fs["title"]) for fs in figure_sections]
    nav += [(key, label) for key, label, present in (
        ("confusion", "Confusion", ctx["confusion"]), ("training", "Training", ctx["training"]),
        ("studies", "Studies", ctx["studies"]), ("runs", "Runs", bool(groups)),
        ("provenance", "Provenance", bool(groups))) if present]
    ctx["nav"] = nav
    return ctx


def render_report(
    results: Sequence[ModelResult],
    out_path: str | Path,
    *,
    title: str = "embedlab report",
    umap_kwargs: Mapping[str, Any] | None = None,
    generated_at: datetime | None = None,
    studies: Sequence[StudyResult] = (),
    workers: int | None = None,
) -> Path:
    """Write one self-contained HTML report (no external resources) for ``results`` and ``studies``; return its path.

    Results that differ only by their training seed are shown as one model, mean ± std over seeds
    (:mod:`embedlab.reports.aggregate`). ``umap_kwargs`` override the UMAP settings shared by all models (keys of
    :func:`embedlab.reports.umap_embed.umap_2d`: ``n_neighbors``, ``min_dist``, ``metric``, ``seed``, ``max_points`` (None:
    every point), ``n_epochs``, ``use_faiss``); the defaults are :data:`DEFAULT_UMAP`. ``workers``: processes that
    compute the layouts (None: :func:`embedlab.reports.umap_embed.auto_workers`: parallel only for 20,000 or more points in all
    and on idle cores); the layouts do not depend on it.
    """
    if not results and not studies:
        raise EmbedlabError("no results to report")
    ctx = build_context(results, title=title, umap_kwargs=umap_kwargs, generated_at=generated_at, studies=studies,
                        workers=workers)
    html = _environment().get_template(TEMPLATE_NAME).render(**ctx)
    out = Path(out_path)
    atomic_write_text(out, html)
    return out


def render_markdown(results: Sequence[ModelResult], studies: Sequence[StudyResult] = ()) -> str:
    """Markdown summary tables (as in the HTML report): one row per model, mean ± std over seeds, the best value of
    each column in **bold**, arrows for the direction. Sections and sub-tables get a bold title line. Then each
    study's tables, as in the report's study section."""
    if not results and not studies:
        raise EmbedlabError("no results to report")
    lines: list[str] = []
    if results:
        groups = group_results(results)
        sections = summary_sections(groups)
        seeds_column = any(g.n > 1 for g in groups)
        for sec in sections:
            multi = len(sections) > 1
            for table in sec.tables:
                heading = " \u00b7 ".join(t for t in ((sec.title if multi else ""), table.title) if t)
                if lines:
                    lines.append("")
                if heading:
                    lines += [f"**{md_escape(heading)}**", ""]
                lines += markdown_table(table, seeds_column=seeds_column)
        if seeds_column:
            lines += ["", "Mean \u00b1 sample standard deviation over seeds (ddof = 1)."]
        noisy = [(g.name, text) for g in groups if (text := _group_label_noise(g))]
        if noisy:
            lines += ["", md_escape(LABEL_NOISE_NOTE), ""]
            lines += [f"- {md_escape(name)}: label noise {md_escape(text)}" for name, text in noisy]
    for study in studies:
        sec = study_section(study)
        for table in sec["tables"]:
            if lines:
                lines.append("")
            lines += [f"**{md_escape(sec['title'])} \u00b7 {md_escape(table['caption'])}**", ""]
            lines.append("| " + " | ".join(md_escape(h) for h in table["header"]) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(table["header"]) - 1)) + "|")
            lines += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in table["rows"]]
            if table["note"]:
                lines += ["", md_escape(table["note"])]
    return "\n".join(lines) + "\n"
