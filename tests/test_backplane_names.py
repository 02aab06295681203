"""The backplane package's public names stay what they are once every one of its modules is loaded.

A submodule named like a package attribute (``connect.py`` beside ``def connect``) replaces that
attribute the first time anything imports it, so ``from rrr.backplane import connect`` gave the
function or the module depending on which test ran first."""

from __future__ import annotations

import importlib
import pkgutil

import rrr.backplane


def test_no_module_of_the_backplane_shadows_one_of_its_names() -> None:
    before = {name: getattr(rrr.backplane, name) for name in rrr.backplane.__all__}
    modules = [info.name for info in pkgutil.iter_modules(rrr.backplane.__path__)]
    assert modules, "the backplane has modules"
    for module in modules:
        importlib.import_module(f"rrr.backplane.{module}")
    shadowed = sorted(set(modules) & set(rrr.backplane.__all__))
    assert shadowed == []
    after = {name: getattr(rrr.backplane, name) for name in rrr.backplane.__all__}
    assert after == before
    assert callable(rrr.backplane.connect) and not isinstance(rrr.backplane.connect, type(rrr.backplane))
