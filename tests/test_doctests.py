"""Every module of the package imports, and every `>>>` example in a docstring holds."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tunewise

# __main__ runs the CLI when imported.
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(tunewise.__path__, "tunewise.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_its_examples_hold(name: str):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
