"""Studies: protocols that train many models and return (and save) their data as one JSON file.

A study is a plug-in: a function ``fn(out_dir, **options) -> dict`` registered with :func:`register_study` in any
module of this package (found on first use, no list to edit) or in an installed package's ``embedlab.studies`` entry
point. Studies return data only; the report layer draws them. Studies that analyse their runs declare
``analyses=True`` and receive an ``analyze(checkpoint, name) -> results folder`` callback from the composition root
(:func:`embedlab.api.study`), since trainers never import the analysis layer.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from embedlab.registry import Registry

Study = Callable[..., dict[str, Any]]


class _StudyRegistry(Registry[Study]):
    """A registry that imports the study modules the first time it is read."""

    _loaded = False

    def _load(self) -> None:
        if _StudyRegistry._loaded:
            return
        _StudyRegistry._loaded = True
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        from importlib.metadata import entry_points

        for ep in entry_points(group="embedlab.studies"):
            ep.load()

    def get(self, name: str):  # type: ignore[override]
        self._load()
        return super().get(name)

    def names(self) -> list[str]:
        self._load()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)


STUDIES = _StudyRegistry("study")


def register_study(name: str, *, description: str, table: Callable[[dict[str, Any]], str] | None = None,
                   analyses: bool = False, filename: str) -> Callable[[Study], Study]:
    """Register ``fn(out_dir, **options) -> dict``: ``table`` renders its data as the Markdown table printed at the
    end; ``analyses``: it takes an ``analyze`` callback; ``filename``: the JSON file it writes in ``out_dir``."""
    return STUDIES.register(name, description=description, table=table, analyses=analyses, filename=filename)
