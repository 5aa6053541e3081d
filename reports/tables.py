"""The summary tables: every metric of every model (mean ± std over seeds), laid out as the results describe.

Each metric entry of a results.json (schema version 2, docs/RESULTS_FORMAT.md; version 1 is upgraded on load) names
its ``section``, the ``table`` inside that section (``""``: the section's main table) and its ``column``; the
top-level ``sections`` give each section's title and note. This module only pivots those descriptors: it knows no
analysis and no metric naming convention. Sections come in first-seen order with the overview first; tables and
columns in first-seen order. The best value of each column (by mean over seeds, among the models evaluated on the
same dataset) is marked using the metric's
``higher_is_better``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from embedlab.reports.aggregate import Group, Stat, metric_stat

MISSING = "\u2013"  # en dash shown for absent values
ARROWS = {True: "\u2191", False: "\u2193", None: ""}
OVERVIEW = "overview"
FALLBACK_SECTION = "other"  # a metric entry that names no section


@dataclass(frozen=True)
class Column:
    """One metric column: ``key`` is the metric's name in results.json, ``label`` what the header shows."""

    key: str
    label: str
    higher_is_better: bool | None
    description: str  # analysis and settings, for the header tooltip
    settings_differ: bool = False

    @property
    def arrow(self) -> str:
        return ARROWS[self.higher_is_better]


@dataclass(frozen=True)
class Cell:
    """One model's value in one column: ``stat`` is None when no seed of the model has the metric."""

    stat: Stat | None
    text: str
    best: bool = False

    @property
    def value(self) -> float | None:
        return None if self.stat is None else self.stat.mean


@dataclass(frozen=True)
class Row:
    name: str
    n_seeds: int
    cells: list[Cell]


@dataclass(frozen=True)
class Table:
    title: str  # "" for a section's only/main table
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    key: str  # the section id of the metric entries ("overview": the headline numbers)
    title: str
    tables: list[Table]
    note: str = ""

    @property
    def n_metrics(self) -> int:
        return sum(len(t.columns) for t in self.tables)


# --------------------------------------------------------------------------------------------- formatting


def format_sig(value: float, digits: int = 4) -> str:
    """Format to ``digits`` significant digits, fixed-point for moderate magnitudes (``0.97 -> '0.9700'``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "\u221e" if value > 0 else "-\u221e"
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits - 1}e}")
    exp = math.floor(math.log10(abs(rounded)))
    if -4 <= exp < digits + 2:
        return f"{rounded:.{max(0, digits - 1 - exp)}f}"
    return f"{rounded:.{digits - 1}e}"


def format_stat(stat: Stat | None) -> str:
    """``mean`` to 4 significant digits, then ``± std`` to the same number of decimals (2 significant digits when
    the mean is printed in exponent form): ``0.9917 ± 0.0012``. A single seed prints the value alone."""
    if stat is None:
        return MISSING
    text = format_sig(stat.mean)
    if stat.std is None:
        return text
    if not math.isfinite(stat.std):
        return f"{text} \u00b1 NaN"
    m = re.fullmatch(r"-?\d+(?:\.(\d+))?", text)
    if m:
        decimals = len(m.group(1) or "")
        return f"{text} \u00b1 {stat.std:.{decimals}f}"
    return f"{text} \u00b1 {stat.std:.1e}"


def _percent(x: Any, spec: str = "g") -> str:
    return f"{100 * x:{spec}} %" if isinstance(x, (int, float)) and not isinstance(x, bool) else MISSING


def label_noise_text(noise: Mapping[str, Any] | None) -> str:
    """``"40 % symmetric, seed 0 (flipped 40.0 %)"`` from a dataset's ``label_noise`` description; "" when None."""
    if not isinstance(noise, Mapping):
        return ""
    kind = str(noise.get("kind") or "symmetric")
    if noise.get("flips"):
        kind += f" ({noise['flips']} flips)"
    text = f"{_percent(noise.get('fraction'))} {kind}"
    if noise.get("seed") is not None:
        text += f", seed {noise['seed']}"
    if noise.get("flipped_fraction") is not None:
        text += f" (flipped {_percent(noise.get('flipped_fraction'), '.1f')})"
    return text


# --------------------------------------------------------------------------------------------- layout


def _describe(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return ""
    analysis = str(entry.get("analysis") or "")
    settings = entry.get("settings")
    if isinstance(settings, Mapping) and settings:
        text = ", ".join(f"{k}={v}" for k, v in settings.items())
        return f"{analysis}: {text}" if analysis else text
    return analysis


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)


def locate(name: str, entry: Any) -> tuple[str, str, str]:
    """``(section, table, column)`` of metric ``name`` from its entry's descriptors. An entry that lacks them
    (hand-edited, or not an object) goes to its analysis's section (else "other"), main table, column = its name."""
    e = entry if isinstance(entry, Mapping) else {}
    section = _text(e.get("section")) or _text(e.get("analysis")) or FALLBACK_SECTION
    table = _text(e.get("table")) or ""
    column = _text(e.get("column")) or name
    return section, table, column


def section_info(groups: Sequence[Group]) -> dict[str, dict[str, str]]:
    """Section id -> {"title", "note"} over every result (the first non-empty value of each wins)."""
    info: dict[str, dict[str, str]] = {}
    for g in groups:
        for m in g.members:
            for key, sec in m.sections.items():
                have = info.setdefault(key, {"title": "", "note": ""})
                for k in ("title", "note"):
                    if not have[k] and sec.get(k):
                        have[k] = sec[k]
    return info


def summary_sections(groups: Sequence[Group]) -> list[Section]:
    """Every metric of every group, placed by its descriptors; sections in first-seen order, the overview first."""
    entries: dict[str, list[Any]] = {}
    run_settings: dict[str, list[str]] = {}  # metric -> the user's settings of its analysis, per run
    layout: dict[str, dict[str, dict[str, str]]] = {}  # section -> table title -> {metric: column label}
    for g in groups:
        for m in g.members:
            settings = m.results.get("settings") if isinstance(m.results.get("settings"), Mapping) else {}
            for k, e in m.metrics.items():
                if k not in entries:
                    entries[k] = []
                    run_settings[k] = []
                    section, table, column = locate(k, e)
                    layout.setdefault(section, {}).setdefault(table, {})[k] = column
                entries[k].append(e)
                analysis = e.get("analysis") if isinstance(e, Mapping) else None
                run_settings[k].append(json.dumps(settings.get(analysis) if isinstance(analysis, str) else None,
                                                  sort_keys=True, default=str))
    info = section_info(groups)
    sections = []
    for sec, tables in layout.items():
        built = [_table(title, [_column(k, label, entries[k], len(set(run_settings[k])) > 1)
                                for k, label in cols.items()], groups)
                 for title, cols in tables.items()]
        meta = info.get(sec, {})
        sections.append(Section(sec, meta.get("title") or sec, built, meta.get("note") or ""))
    sections.sort(key=lambda s: s.key != OVERVIEW)  # the overview first: it holds the headline numbers
    return sections


def _column(key: str, label: str, entries: list[Any], settings_differ: bool) -> Column:
    """``settings_differ``: the runs were analysed with different user settings (``results.json["settings"]``)."""
    dirs = {e.get("higher_is_better") for e in entries if isinstance(e, Mapping)}
    direction = dirs.pop() if len(dirs) == 1 else None
    direction = direction if isinstance(direction, bool) else None
    descriptions = list(dict.fromkeys(_describe(e) for e in entries))
    description = " | ".join(d for d in descriptions[:3] if d) + (" | …" if len(descriptions) > 3 else "")
    return Column(key, label, direction, f"{key} — {description}" if description else key, settings_differ)


def _shown(x: float) -> float:
    """The value as printed (4 significant digits): bests are compared at the precision the reader sees."""
    return float(format_sig(x)) if math.isfinite(x) and x != 0 else x


def _dataset_of(g: Group) -> str:
    """What a group was evaluated on, as its test-set size and class names (not the dataset's name, which differs
    between an .npz file's stem and the dataset it came from): bests are compared within one such set."""
    d = g.first.dataset
    return json.dumps([d.get("num_examples", len(g.first.labels)), g.first.class_names], default=str)


def _table(title: str, columns: list[Column], groups: Sequence[Group]) -> Table:
    stats = [[metric_stat(g, c.key) for c in columns] for g in groups]
    rows = [Row(g.name, g.n, []) for g in groups]
    datasets = [_dataset_of(g) for g in groups]
    for j, col in enumerate(columns):
        best: dict[str, float] = {}
        for ds in set(datasets):  # "best" only among models evaluated on the same data
            means = [_shown(s[j].mean) for s, d in zip(stats, datasets)
                     if d == ds and s[j] is not None and math.isfinite(s[j].mean)]
            if col.higher_is_better is not None and len(means) >= 2:
                best[ds] = max(means) if col.higher_is_better else min(means)
        for i, row in enumerate(rows):
            st = stats[i][j]
            is_best = (datasets[i] in best and st is not None and math.isfinite(st.mean)
                       and _shown(st.mean) == best[datasets[i]])
            row.cells.append(Cell(st, format_stat(st), is_best))
    return Table(title, columns, rows)


# --------------------------------------------------------------------------------------------- markdown


def md_escape(text: str) -> str:
    """Escape text for a Markdown table cell (pipes, emphasis/code markers, raw HTML, newlines)."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in ("\\", "|", "*", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text


def markdown_table(table: Table, *, seeds_column: bool) -> list[str]:
    header = ["model"] + (["seeds"] if seeds_column else [])
    header += [f"{md_escape(c.label)} {c.arrow}".rstrip() for c in table.columns]
    align = "|---|" + ("---:|" if seeds_column else "") + "---:|" * len(table.columns)
    lines = ["| " + " | ".join(header) + " |", align]
    for row in table.rows:
        vals = [f"**{c.text}**" if c.best else c.text for c in row.cells]
        lead = [md_escape(row.name)] + ([str(row.n_seeds)] if seeds_column else [])
        lines.append("| " + " | ".join(lead + vals) + " |")
    return lines
