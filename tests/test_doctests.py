"""Every module of embedlab.metrics carries runnable examples (``>>>``), and they all pass; so do the examples of the
other core modules that have them (summary statistics, registries)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import embedlab.metrics

MODULES = ["embedlab.metrics"] + sorted(f"embedlab.metrics.{m.name}" for m in pkgutil.iter_modules(
    embedlab.metrics.__path__) if not m.name.startswith("_"))
OTHER_CORE = ["embedlab.stats", "embedlab.registry"]


def test_every_topic_module_is_checked() -> None:
    assert {"embedlab.metrics.geometry", "embedlab.metrics.classification", "embedlab.metrics.calibration",
            "embedlab.metrics.clustering", "embedlab.metrics.ood"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES + OTHER_CORE)
def test_module_examples(name: str) -> None:
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name} has no doctest examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"


@pytest.mark.parametrize("name", MODULES[1:])
def test_every_public_function_has_an_example(name: str) -> None:
    module = importlib.import_module(name)
    with_examples = {t.name.rsplit(".", 1)[-1] for t in doctest.DocTestFinder().find(module) if t.examples}
    public = [n for n in getattr(module, "__all__", []) if callable(getattr(module, n))
              and not isinstance(getattr(module, n), type)]
    missing = [n for n in public if n not in with_examples]
    assert not missing, f"{name}: public functions without a doctest example: {missing}"
