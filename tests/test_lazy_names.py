"""statetap's packages load their public names on first use (statetap._lazy): the names are
the same objects eager imports gave, a submodule of the same name does not shadow its
function, and a value set on the package is read back as set."""

from __future__ import annotations

import subprocess
import sys

import pytest


def in_fresh_python(code: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return run.stdout.strip()


def test_a_package_import_loads_no_heavy_library():
    code = (
        "import sys, statetap, statetap.extract, statetap.zoo, statetap.interp.lens, "
        "statetap.interp.steering, statetap.interp.elk\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    assert in_fresh_python(code) == "[]"


@pytest.mark.parametrize(
    "package, name, module",
    [
        ("statetap.interp.lens", "train", "statetap.interp.lens.train"),
        ("statetap.interp.lens", "evaluate", "statetap.interp.lens.evaluate"),
        ("statetap", "attach", "statetap.tap"),
        ("statetap.extract", "open_extraction", "statetap.extract.reader"),
    ],
)
def test_a_public_name_is_its_definition_even_after_a_same_named_submodule_loads(
    package, name, module
):
    import importlib

    importlib.import_module(module)  # the import system sets package.<submodule> here
    defined = getattr(importlib.import_module(module), name)
    assert getattr(importlib.import_module(package), name) is defined
    assert name in dir(importlib.import_module(package))


def test_a_value_set_on_the_package_is_read_as_set(monkeypatch):
    import statetap.interp.lens as lens
    from statetap.interp.lens.train import train

    monkeypatch.setattr(lens, "train", "replaced")
    assert lens.train == "replaced"
    monkeypatch.undo()
    assert lens.train is train


def test_an_unknown_name_is_an_attribute_error():
    import statetap

    with pytest.raises(AttributeError, match="no_such_name"):
        statetap.no_such_name  # noqa: B018
