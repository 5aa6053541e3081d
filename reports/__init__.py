"""Report layer: turn saved analysis results (``results.json`` + ``arrays.npz``) and study results into one
self-contained HTML report or Markdown tables.

This package reads files on disk only. From core it imports nothing but :mod:`embedlab.io` and
:class:`embedlab.errors.EmbedlabError`; it never imports ``trainers``, ``analyses`` or torch.
"""
from __future__ import annotations

from embedlab.reports.html import render_markdown, render_report
from embedlab.reports.load import ModelResult, ReportInputs, StudyResult, load_report_inputs, load_results

__all__ = ["ModelResult", "ReportInputs", "StudyResult", "load_report_inputs", "load_results", "render_markdown",
           "render_report"]
