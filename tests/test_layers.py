"""Imports run one way: a module of unidm imports only from its own layer or the layers below it.

The table is docs/architecture.md's numbered list (lowest first), with ``rng.py`` beside ``utils.py`` and the
``likelihood/`` package between ``samplers/`` and ``methods/``. Every ``import`` in every module is read with
``ast`` (top-level, function-level and ``TYPE_CHECKING`` blocks alike); docstring examples are not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unidm"

# Lowest layer first. A name is a top-level module or subpackage of unidm; ``__init__`` is unidm/__init__.py.
LAYERS: list[tuple[str, ...]] = [
    ("rng", "utils"),
    ("oracles",),
    ("data",),
    ("processes",),
    ("parameterization", "denoiser", "guidance"),
    ("nn",),
    ("losses",),
    ("integrate",),
    ("samplers",),
    ("likelihood",),
    ("methods",),
    ("train",),
    ("evaluation",),
    ("config", "presets", "run", "pairs", "interop", "commands", "cli", "__main__", "__init__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# Known violations, (importing module, imported module). Each names who fixes it; shrink, never grow.
ALLOWED: set[tuple[str, str]] = set()  # empty: train.loop -> config was the last (fixed by unidm/train/config.py)


def _module_name(path: Path) -> list[str]:
    return list(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imported_modules(source: str, module: list[str]) -> list[list[str]]:
    """Every ``unidm`` module that ``source`` (the text of the module ``module``, split on dots) imports."""
    package = module[:-1]  # for pkg/__init__.py the package is pkg itself, which is what level 1 means
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            if len(target) == 1:  # ``from unidm import x``: x is a layer's module, or a name of unidm/__init__.py
                found += [target + [a.name] if a.name in LAYER else target for a in node.names]
            else:
                found.append(target)
    return [t for t in found if t[0] == "unidm"]


def _layer_name(module: list[str]) -> str:
    return module[1] if len(module) > 1 else "__init__"


def violations(source: str, module: list[str]) -> list[tuple[str, str]]:
    """``(module, imported)`` pairs where ``module`` imports from a higher layer than its own."""
    src = _layer_name(module)
    out = []
    for target in imported_modules(source, module):
        dst = _layer_name(target)
        assert dst in LAYER, f"{'.'.join(module)} imports {'.'.join(target)}: {dst!r} is in no layer of the table"
        if LAYER[dst] > LAYER[src]:
            out.append((".".join(module), ".".join(target)))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = {_layer_name(_module_name(p)) for p in MODULES} - set(LAYER)
    assert not missing, f"add these to LAYERS (and to docs/architecture.md): {sorted(missing)}"


def test_imports_run_down_the_layers():
    found = set()
    for path in MODULES:
        found |= set(violations(path.read_text(encoding="utf-8"), _module_name(path)))
    new = sorted(found - ALLOWED)
    assert not new, "imports from a higher layer:\n" + "\n".join(f"  {a} -> {b}" for a, b in new)
    fixed = sorted(ALLOWED - found)
    assert not fixed, f"fixed, remove from ALLOWED: {fixed}"


@pytest.mark.parametrize("source, module, expected", [
    ("from ..samplers import sample", "unidm.losses.dsm", [("unidm.losses.dsm", "unidm.samplers")]),
    ("def f():\n    from unidm.train.loop import train", "unidm.nn.mlp", [("unidm.nn.mlp", "unidm.train.loop")]),
    ("import unidm.cli", "unidm.oracles", [("unidm.oracles", "unidm.cli")]),
    ("from . import denoiser", "unidm.oracles", [("unidm.oracles", "unidm.denoiser")]),
    ("from .. import __version__", "unidm.nn.mlp", [("unidm.nn.mlp", "unidm")]),
    ("from . import grids", "unidm.samplers.__init__", []),
    ("from .base import Dataset", "unidm.data.__init__", []),
    ("from ..utils import check_kwargs\nfrom ..oracles import GaussianOracle", "unidm.data.mixtures", []),
    ('"""\n>>> from unidm.cli import main\n"""', "unidm.utils", []),
])
def test_the_checker_sees_what_it_must(source, module, expected):
    assert violations(source, module.split(".")) == expected
