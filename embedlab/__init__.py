"""embedlab: train classifiers with mixup-family methods (MultiMix, Dense MultiMix, …) and study their embedding spaces.

The Python API (:mod:`embedlab.api`): ``train(config, out) -> Run``, ``evaluate(source_or_arrays) -> Results``,
``report(results, path)``. Importing ``embedlab`` loads none of it: the names are resolved on first use, so
``import embedlab`` costs almost nothing beyond the interpreter.
"""

__version__ = "0.1.0"

_API = ("Results", "Run", "demo", "evaluate", "list_plugins", "report", "study", "train", "train_config")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from embedlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'embedlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
