"""Report layer: turn saved analysis results (``results.json`` + ``arrays.npz``) into HTML / Markdown reports.

This package reads files on disk only. From core it imports nothing but :mod:`embedlab.io` and
:class:`embedlab.errors.EmbedlabError`; it never imports ``trainers``, ``analyses`` or torch.
"""
from __future__ import annotations

from reports.html import render_markdown, render_report
from reports.load import ModelResult, load_results

__all__ = ["ModelResult", "load_results", "render_markdown", "render_report"]
