"""Every docstring example of ``fixedq`` and ``fixedq_cli`` runs (in the README's test command).

One test per module: the module is imported (so a module that cannot be imported fails here
too) and its doctests run with :mod:`doctest`. A module without examples still gets its import
checked; examples marked ``# doctest: +SKIP`` are skipped by doctest itself. Modules are
imported one by one, so ``pytest tests/test_doctests.py -k engine`` runs the engine's examples
without importing TensorFlow.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fixedq
import fixedq_cli

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = []
    for pkg in (fixedq, fixedq_cli):
        names.append(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                names.append(info.name)
    return sorted(names)


MODULES = _modules()


def test_every_module_is_collected():
    assert "fixedq.tensors.rounding" in MODULES and "fixedq.engine.kernels" in MODULES
    assert any(m.startswith("fixedq_cli.commands.") for m in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
