"""Training recipes: JSON files beside this module that a user can read, copy and edit.

A recipe is one JSON object::

    {"description": "one line: what this protocol is",
     "reference": "where its numbers come from",          (optional)
     "notes": ["anything a user must know", ...],         (optional)
     "config": {TrainConfig keys: "epochs": 2000, ...}}

``config`` holds :class:`embedlab.config.TrainConfig` keys only, with their JSON types (unknown keys and wrong types
are errors naming the recipe and the key). A recipe file is also a valid ``--config`` file. Layering, lowest first:
TrainConfig defaults < recipe < ``--config`` file < command-line flags and ``--set KEY=VALUE``.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedlab.config import TrainConfig
from embedlab.errors import EmbedlabError

RECIPE_DIR = Path(__file__).resolve().parent
_TOP_KEYS = {"description": str, "reference": str, "notes": list, "config": dict}


@dataclass(frozen=True)
class Recipe:
    """A loaded, validated recipe; ``config`` holds only the keys the file sets (typed as TrainConfig wants)."""

    name: str
    path: Path
    description: str
    config: dict[str, Any]
    reference: str = ""
    notes: tuple[str, ...] = field(default=())

    def resolved(self) -> TrainConfig:
        """The recipe over TrainConfig's defaults."""
        return TrainConfig.from_dict(self.config, f"recipe {self.name}", strict=True)


def recipe_names() -> list[str]:
    """Names of the packaged recipes (file names without ``.json``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A packaged recipe's name, or the path of a recipe file."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.suffix == ".json" or "/" in s or p.is_file():
        if not p.is_file():
            raise EmbedlabError(f"recipe file not found: {p}")
        return p
    known = recipe_names()
    if s not in known:
        close = difflib.get_close_matches(s, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EmbedlabError(f"unknown recipe {s!r}{hint}; known: {', '.join(known)} (or give a .json path)")
    return RECIPE_DIR / f"{s}.json"


def _read_json(p: Path, what: str) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise EmbedlabError(f"cannot read {what} {p}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise EmbedlabError(f"{what} {p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe (packaged name or file path); errors name the recipe and the offending key."""
    p = recipe_path(name_or_path)
    name = p.stem if p.parent == RECIPE_DIR else str(p)
    where = f"recipe {name}"
    raw = _read_json(p, "recipe")
    if not isinstance(raw, dict):
        raise EmbedlabError(f"{where}: expected a JSON object with description and config")
    unknown = set(raw) - set(_TOP_KEYS)
    if unknown:
        raise EmbedlabError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(_TOP_KEYS)}")
    for key in ("description", "config"):
        if key not in raw:
            raise EmbedlabError(f"{where}: missing key {key!r}")
    for key, tp in _TOP_KEYS.items():
        if key in raw and not isinstance(raw[key], tp):
            raise EmbedlabError(f"{where}: {key} must be a JSON {tp.__name__.replace('dict', 'object')}, "
                                f"got {raw[key]!r}")
    if not all(isinstance(n, str) for n in raw.get("notes", [])):
        raise EmbedlabError(f"{where}: notes must be a list of strings")
    cfg = TrainConfig.from_dict(raw["config"], where, strict=True)
    cfg.validate(where)
    return Recipe(name, p, raw["description"], dict(raw["config"]), raw.get("reference", ""),
                  tuple(raw.get("notes", ())))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TrainConfig keys of a ``--config`` file: a plain dict of keys, a recipe, or a run's ``meta.json``
    (whose ``config`` entry is used). Values must have their JSON types."""
    p = Path(path).expanduser()
    raw = _read_json(p, "config")
    if not isinstance(raw, dict):
        raise EmbedlabError(f"--config {p}: expected a JSON object of TrainConfig keys")
    values = raw.get("config", raw)
    if not isinstance(values, dict):
        raise EmbedlabError(f"--config {p}: its config entry must be a JSON object")
    TrainConfig.from_dict(values, f"--config {p}", strict=True)
    return dict(values)


__all__ = ["RECIPE_DIR", "Recipe", "load_recipe", "read_config_file", "recipe_names", "recipe_path"]
