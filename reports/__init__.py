"""Report layer: turn saved analysis results (``results.json`` + ``arrays.npz``, schema version 2 or the upgraded
version 1) and study results into one self-contained HTML report, Markdown or LaTeX tables, and PDF/PNG figures.

This package reads files on disk only. From core it imports nothing but :mod:`embedlab.io` and
:class:`embedlab.errors.EmbedlabError`; it never imports ``trainers``, ``analyses`` or torch.
"""
from __future__ import annotations

from embedlab.reports.html import render_markdown, render_report
from embedlab.reports.load import (ModelResult, ReportInputs, StudyResult, load_report_inputs, load_results,
                                   upgrade_v1)
from embedlab.reports.paper_figures import write_figures
from embedlab.reports.tex import render_tex

__all__ = ["ModelResult", "ReportInputs", "StudyResult", "load_report_inputs", "load_results", "render_markdown",
           "render_report", "render_tex", "upgrade_v1", "write_figures"]
