"""LaTeX tables for a paper: the report's summary tables and benchmark studies as booktabs ``tabular``\\ s.

:func:`render_tex` returns a fragment (no preamble, no ``\\documentclass``) to ``\\input`` into a document that loads
``booktabs``. One ``table`` float per summary table (the same sections, tables, columns and cells as the HTML and
Markdown reports, :func:`embedlab.reports.tables.summary_sections`): mean ± standard deviation over seeds with the
table's precision, the best value of each column in bold, arrows for the better direction. A benchmark study
(``embedlab study benchmark``, ``"study": "benchmark"``) adds its per-method table and the paired differences to its
baseline with their 95 % intervals. Every user-provided string is escaped (:func:`tex_escape`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from embedlab.errors import EmbedlabError
from embedlab.stats import interval, significant
from embedlab.reports.aggregate import group_results
from embedlab.reports.load import ModelResult, StudyResult
from embedlab.reports.studies import benchmark_entry, benchmark_grid
from embedlab.reports.tables import MISSING, Section, Table, summary_sections

__all__ = ["benchmark_tables", "render_tex", "summary_table", "tex_escape", "tex_number"]

_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
# characters a plain pdfLaTeX document has no glyph for, as math or text commands (other non-ASCII text is kept)
_UNICODE = {
    "\u00b1": r"$\pm$", "\u00b7": r"$\cdot$", "\u00d7": r"$\times$", "\u2013": "--", "\u2014": "---",
    "\u2191": r"$\uparrow$", "\u2193": r"$\downarrow$", "\u221e": r"$\infty$", "\u2264": r"$\leq$",
    "\u2265": r"$\geq$", "\u2212": "$-$", "\u2192": r"$\rightarrow$", "\u2113": r"$\ell$", "\u2082": r"$_2$",
    "\u00a7": r"\S{}", "\u00b0": r"$^\circ$", "\u2026": r"\ldots{}", "\u00a0": "~",
    "\u03b1": r"$\alpha$", "\u03b2": r"$\beta$", "\u03b3": r"$\gamma$", "\u03b4": r"$\delta$",
    "\u03b5": r"$\varepsilon$", "\u03b8": r"$\theta$", "\u03bb": r"$\lambda$", "\u03bc": r"$\mu$",
    "\u03c0": r"$\pi$", "\u03c3": r"$\sigma$", "\u03c4": r"$\tau$", "\u0394": r"$\Delta$",
}
_ARROW = {True: r"$\uparrow$", False: r"$\downarrow$", None: ""}


def tex_escape(text: Any) -> str:
    """``text`` as LaTeX text: the ten special characters (and ``< > |``) escaped, whitespace runs and newlines made
    single spaces, and the common non-ASCII symbols (±, ·, ε, ↑, …) written as LaTeX commands."""
    out = []
    for ch in " ".join(str(text).split()):
        out.append(_SPECIALS.get(ch) or _UNICODE.get(ch) or ch)
    return "".join(out)


def tex_number(text: str) -> str:
    """One number as the tables print it (``0.9123``, ``-1.5e+09``, ``NaN``, ``∞``) as math-mode LaTeX."""
    text = text.strip()
    if text in ("\u221e", "-\u221e"):
        return text.replace("\u221e", r"\infty")
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)e([+-]\d+)", text)
    if m:
        return rf"{m.group(1)} \times 10^{{{int(m.group(2))}}}"
    if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", text):
        return text
    return r"\mathrm{" + tex_escape(text) + "}"


def _cell(text: str, *, best: bool = False) -> str:
    """A table cell's text (``0.9123 ± 0.0041``, ``0.9123``, ``–``) as ``$0.9123 \\pm 0.0041$``, bold when best."""
    if text == MISSING:
        return "--"
    parts = [p.strip() for p in text.split("\u00b1")]
    body = r" \pm ".join(tex_number(p) for p in parts)
    return f"$\\mathbf{{{body}}}$" if best else f"${body}$"


def _label(taken: set[str], *parts: str) -> str:
    """``tab:embedlab-<slug>``, unique among ``taken`` (which it joins)."""
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower()).strip("-")
    base = "tab:embedlab-" + (slug[:60].rstrip("-") or "table")
    label, i = base, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    taken.add(label)
    return label


def _tabular(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def _float(caption: str, label: str, body: list[str]) -> list[str]:
    return [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}", *body,
            r"\end{table}", ""]


def summary_table(sec: Section, table: Table, *, seeds_column: bool, multi: bool,
                  labels: set[str] | None = None) -> list[str]:
    """One summary table as a ``table`` float: model, (seeds), one column per metric."""
    header = ["Model"] + ([r"$n$"] if seeds_column else [])
    differ = False
    for c in table.columns:
        head = tex_escape(c.label) + (f" {_ARROW[c.higher_is_better]}" if c.arrow else "")
        if c.settings_differ:
            head += r"\textsuperscript{\dag}"
            differ = True
        header.append(head)
    rows = []
    for row in table.rows:
        cells = [tex_escape(row.name)] + ([str(row.n_seeds)] if seeds_column else [])
        rows.append(cells + [_cell(c.text, best=c.best) for c in row.cells])
    title = " \u00b7 ".join(t for t in ((sec.title if multi or not table.title else ""), table.title) if t)
    notes = []
    if seeds_column:
        notes.append(r"Mean $\pm$ sample standard deviation over $n$ seeds.")
    if any(c.higher_is_better is not None for c in table.columns):
        notes.append(r"$\uparrow$/$\downarrow$: higher/lower is better; best in bold.")
    if differ:
        notes.append(r"\dag: analysis settings differ between models.")
    caption = " ".join([tex_escape(title) + "." if title else ""] + notes).strip()
    align = "l" + ("r" if seeds_column else "") + "r" * len(table.columns)
    return _float(caption, _label(set() if labels is None else labels, sec.key, table.title),
                  _tabular(header, rows, align))


# --------------------------------------------------------------------------------------------- benchmark studies


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def benchmark_tables(study: StudyResult, labels: set[str] | None = None) -> list[str]:
    """A benchmark study's per-method mean ± std table (best mean in bold) and, with a baseline, the paired
    differences to it with their 95 % Student-t intervals (bold: the interval excludes 0)."""
    data = study.data
    labels = set() if labels is None else labels
    rows, present, better = benchmark_grid(data)
    if not rows:
        return [f"% benchmark study {tex_escape(study.name)}: no rows", ""]
    config = data.get("config") if isinstance(data.get("config"), Mapping) else {}
    dataset = tex_escape(config.get("dataset", "?"))
    key = f"{study.name} {config.get('dataset', '')}"

    header = ["Method", r"$n$"] + [tex_escape(m) + (f" {_ARROW[better[m]]}" if better[m] is not None else "")
                                   for m in present]
    best: dict[str, float] = {}
    for m in present:
        means = [float(f"{v:.4f}") for r in rows if (v := _num(benchmark_entry(r, m).get("mean"))) is not None]
        if better[m] is not None and len(means) >= 2:
            best[m] = max(means) if better[m] else min(means)
    body = []
    for r in rows:
        cells = [tex_escape(str(r.get("label", "?")) + (f" ({r['variant']})" if r.get("variant") else "")), str(len(r.get("seeds_done") or []))]
        for m in present:
            e = benchmark_entry(r, m)
            mean, std = _num(e.get("mean")), _num(e.get("std"))
            if mean is None:
                cells.append("--")
                continue
            text = f"{mean:.4f}" + (rf" \pm {std:.4f}" if std is not None else "")
            bold = m in best and float(f"{mean:.4f}") == best[m]
            cells.append(f"$\\mathbf{{{text}}}$" if bold else f"${text}$")
        body.append(cells)
    caption = (f"Benchmark on {dataset}: mean $\\pm$ sample standard deviation over $n$ seeds. "
               r"$\uparrow$/$\downarrow$: higher/lower is better; best mean in bold.")
    out = _float(caption, _label(labels, key, "means"), _tabular(header, body, "lr" + "r" * len(present)))
    base = data.get("baseline")
    if not isinstance(base, str):
        return out
    diffs = []
    for r in rows:
        if r.get("label") == base:
            continue
        cells = [tex_escape(str(r.get("label", "?")) + (f" ({r['variant']})" if r.get("variant") else ""))]
        for m in present:
            d = benchmark_entry(r, m).get("diff_to_baseline")
            mean = _num(d.get("mean")) if isinstance(d, Mapping) else None
            if mean is None:
                cells.append("--")
                continue
            ci = interval(d)
            if ci is None:
                cells.append(f"${mean:+.4f}$ [n/a]")
                continue
            lo, hi = ci
            text = rf"{mean:+.4f}\ [{lo:+.4f}, {hi:+.4f}]"
            cells.append(f"$\\mathbf{{{text}}}$" if significant(d) else f"${text}$")
        diffs.append(cells)
    if diffs:
        header = ["Method"] + [tex_escape(m) + (f" {_ARROW[better[m]]}" if better[m] is not None else "")
                               for m in present]
        caption = (f"Benchmark on {dataset}: paired difference to {tex_escape(base)} (same seed), mean and 95\\,\\% "
                   r"Student-$t$ interval over the seeds; bold: the interval excludes 0 (per cell, uncorrected); "
                   r"n/a: fewer than 3 seeds or a zero-width interval.")
        out += _float(caption, _label(labels, key, "paired"), _tabular(header, diffs, "l" + "r" * len(present)))
    return out


# --------------------------------------------------------------------------------------------- document


def render_tex(results: Sequence[ModelResult], studies: Sequence[StudyResult] = ()) -> str:
    """A LaTeX fragment of booktabs tables: every summary table of ``results`` (grouped over seeds, as in the HTML
    report), then each benchmark study's tables; other studies are named in a comment. Needs
    ``\\usepackage{booktabs}``."""
    if not results and not studies:
        raise EmbedlabError("no results to report")
    labels: set[str] = set()
    lines = ["% Tables written by embedlab (embedlab report --format tex); needs \\usepackage{booktabs}.", ""]
    if results:
        groups = group_results(results)
        sections = summary_sections(groups)
        seeds_column = any(g.n > 1 for g in groups)
        for sec in sections:
            for table in sec.tables:
                lines += summary_table(sec, table, seeds_column=seeds_column, multi=len(sections) > 1, labels=labels)
    for study in studies:
        if study.data.get("study") == "benchmark":
            lines += benchmark_tables(study, labels)
        else:
            lines += [f"% study {tex_escape(study.name)} ({tex_escape(study.path.name)}): LaTeX tables are written "
                      "for benchmark studies only", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


