"""Analyses built on trained embedlab models."""
