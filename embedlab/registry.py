"""Plug-in registries filled by decorators beside each definition.

>>> MODELS = Registry("model")
>>> @MODELS.register("tiny", description="a tiny model")
... def tiny(num_classes: int):
...     return num_classes
>>> MODELS.create("tiny", num_classes=3)
3
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from embedlab.errors import EmbedlabError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plug-in: the object (class or factory), a one-line description and free metadata."""

    name: str
    obj: T
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name → plug-in table. ``register`` is a decorator; ``create`` is the one way to build a plug-in.

    ``loader`` (optional): called once, before the first lookup or listing (``get``, ``names``, ``in``, iteration), to
    import the modules whose decorators fill the table, so that importing the registry's package imports none of them.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._loader = loader

    def _load(self) -> None:
        loader, self._loader = self._loader, None  # first: registrations made while loading must not recurse
        if loader is not None:
            try:
                loader()
            except BaseException:
                self._loader = loader  # a failed load is retried (and fails again, visibly) on the next lookup
                raise

    def register(self, name: str, *, description: str = "", **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = description or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
            desc = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, obj, desc, dict(meta))
            return obj

        return deco

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            self._load()
        try:
            return self._entries[name]
        except KeyError:
            import difflib  # the error path only: keeps importing a registry cheap

            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EmbedlabError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).obj(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())
