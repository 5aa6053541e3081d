"""The layer contract, checked on every import statement (module level and inside functions) of the installed
namespace, and the packaging that maps the repository's folders onto it.

    core (embedlab.*: config, data, models, methods, metrics, ...)  ←  embedlab.trainers, embedlab.analyses
    embedlab.reports reads files only: no torch, no trainers or analyses; from core only errors, io, config and stats (pure statistics, no torch)
    embedlab.api (and embedlab.launch, the grid jobs it submits) compose every layer; embedlab.cli is argparse
    over embedlab.api
    (embedlab/__init__.py re-exports the API lazily and embedlab/__main__.py runs the CLI: entry points, not layers)

import-linter was the first choice, but its graph builder (grimp) finds a package's modules by walking the package's
folder, so it does not see embedlab.trainers/analyses/reports, which live in top-level folders mapped by
pyproject.toml ("Module 'embedlab.reports' does not exist"). This test reads the same mapping instead.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("embedlab.trainers", "embedlab.analyses", "embedlab.reports", "embedlab.api", "embedlab.launch", "embedlab.cli")


def _package_dirs() -> dict[str, Path]:
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in cfg["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Every module of the installed namespace → its file."""
    mods: dict[str, Path] = {}
    dirs = _package_dirs()
    for pkg, folder in dirs.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "embedlab" and any(name.startswith(p + ".") or name == p for p in dirs if p != "embedlab"):
                continue
            mods[name] = f
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``name`` imports, anywhere in the file (``from a import b`` counts a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> str:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), "core")


FORBIDDEN = {
    "core": set(LAYERS),
    "embedlab.trainers": {"embedlab.analyses", "embedlab.reports", "embedlab.api", "embedlab.cli"},
    "embedlab.analyses": {"embedlab.trainers", "embedlab.reports", "embedlab.api", "embedlab.cli"},
    "embedlab.reports": {"embedlab.trainers", "embedlab.analyses", "embedlab.api", "embedlab.cli"},
    "embedlab.api": {"embedlab.cli"},
    "embedlab.launch": {"embedlab.cli"},  # composes like the API: one grid job trains and analyses a run
    "embedlab.cli": set(),
}
ENTRY_POINTS = {"embedlab", "embedlab.__main__"}  # the package's lazy re-export of the API, and `python -m embedlab`
REPORTS_MAY_USE = {"embedlab", "embedlab.errors", "embedlab.io", "embedlab.config", "embedlab.stats"}
CLI_MAY_USE = {"embedlab", "embedlab.api", "embedlab.errors", "embedlab.config", "embedlab.recipes"}


def test_every_module_keeps_to_its_layer() -> None:
    mods = _modules()
    assert {"embedlab.cli", "embedlab.api", "embedlab.trainers.loop", "embedlab.analyses.runner",
            "embedlab.reports.html", "embedlab.config"} <= set(mods)
    bad = []
    for name, path in sorted(mods.items()):
        if name in ENTRY_POINTS:
            continue
        layer = _layer(name)
        for imp in sorted(_imports(name, path)):
            target = _layer(imp) if imp.startswith("embedlab") else None
            if target is not None and target != layer and target in FORBIDDEN[layer]:
                bad.append(f"{name} ({layer}) imports {imp}")
            if layer == "embedlab.reports":
                top = imp.split(".")[0]
                if top == "torch" or (imp.startswith("embedlab") and _layer(imp) == "core"
                                      and imp not in REPORTS_MAY_USE and imp.rsplit(".", 1)[0] not in REPORTS_MAY_USE):
                    bad.append(f"{name} (reports read files only) imports {imp}")
            if layer == "embedlab.cli" and imp.startswith("embedlab") and imp not in CLI_MAY_USE \
                    and imp.rsplit(".", 1)[0] not in CLI_MAY_USE:
                bad.append(f"{name} (argparse over the API) imports {imp}")
    assert not bad, "\n".join(bad)


def test_the_contract_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: an upward import inside a function is found, a relative one resolved."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from embedlab.reports import html\n    from ..analyses import runner\n")
    assert {"embedlab.reports", "embedlab.reports.html", "embedlab.analyses", "embedlab.analyses.runner"} <= \
        _imports("embedlab.trainers.m", f)
    assert _layer("embedlab.analyses.runner") == "embedlab.analyses" and _layer("embedlab.metrics.geometry") == "core"


def test_setuptools_packages_name_every_package_folder() -> None:
    """pyproject.toml lists the packages by hand (the mapping needs it): a new sub-package must be added there."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {n.rsplit(".", 1)[0] if n.endswith(".__init__") else n for n, p in _modules().items()
             if p.name == "__init__.py"}
    assert found == set(cfg["packages"])


@pytest.mark.slow
def test_built_wheel_installs_only_the_embedlab_namespace(tmp_path: Path) -> None:
    """``pip install .`` (a wheel, not editable) into a fresh venv adds only embedlab* to its site-packages, and
    embedlab imports and runs from there. The fresh venv reaches the dependencies (torch, ...) through a .pth file
    naming this environment's site-packages, so nothing is downloaded."""
    import shutil
    import subprocess
    import sysconfig

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "data", "runs", "*.egg-info", "build",
                                                             "__pycache__", "docs", "benchmarks"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    before = set(p.name for p in site.iterdir())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                    *map(str, wheels.glob("*.whl"))], check=True)
    added = sorted(set(p.name for p in site.iterdir()) - before)
    assert added and [a for a in added if not a.startswith("embedlab")] == [], added
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc. from this environment
    code = ("import embedlab, embedlab.reports, embedlab.analyses.registry, embedlab.trainers.state, sys\n"
            "import embedlab.reports.html as h\n"
            "assert embedlab.__file__.startswith(sys.argv[1]), embedlab.__file__\n"
            "assert h.__file__.startswith(sys.argv[1]), h.__file__\n"
            "from importlib.resources import files\n"
            "assert any(p.name.endswith('.j2') for p in files('embedlab.reports').joinpath('templates').iterdir())\n"
            "assert any(p.name == 'digits.json' for p in files('embedlab.recipes').iterdir())\n"
            "assert 'digits' in [e['name'] for e in embedlab.list_plugins('datasets')]\n"
            "assert 'knn' in [e['name'] for e in embedlab.list_plugins('analyses')]\n"
            "import embedlab.cli; embedlab.cli.build_parser()\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([str(py), "-c", code, str(site)], check=True, cwd=tmp_path, env=env)
    proc = subprocess.run([str(venv / "bin" / "embedlab"), "list", "studies"], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "toy-depth" in proc.stdout, proc.stderr
