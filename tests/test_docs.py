"""The examples in docstrings and in the README run and show what they claim."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import statetap.interp
import statetap.kernels

# statetap.kernels and statetap.interp live in other folders of the checkout: an editable
# install does not list them under statetap's own folder, so each is walked by name.
PACKAGES = (statetap, statetap.kernels, statetap.interp)
ALL_MODULES = sorted(
    {
        info.name
        for package in PACKAGES
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        if not info.name.rsplit(".", 1)[-1].startswith("_")
    }
)
# Modules whose docstrings carry examples that run (not all ``+SKIP``: those need a trained
# zoo model); every reference definition must be among them.
MODULES = [
    name
    for name in ALL_MODULES
    if any(
        not example.options.get(doctest.SKIP)
        for test in doctest.DocTestFinder().find(importlib.import_module(name))
        for example in test.examples
    )
]


def test_every_reference_has_an_example():
    references = [name for name in ALL_MODULES if name.endswith(".reference")]
    assert len(references) == 7 and set(references) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_example_shapes():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    out = namespace["out"]
    # The shapes the README's comments promise.
    for line in code.splitlines():
        match = re.match(r"(out\.\w+)\s+# \[([\d, ]+)\]", line)
        if match:
            shape = tuple(int(d) for d in match.group(2).split(","))
            assert tuple(eval(match.group(1), namespace).shape) == shape, line
    assert out.states.dtype == torch.float32
    # Row 1 has multiplier 0: its state at the last token is the unsteered one.
    plain = namespace["wkv6"](*(namespace[n] for n in "rkvwu"), scale=1.0, output_final_state=True)
    torch.testing.assert_close(out.final_state[1], plain.final_state[1], rtol=1e-5, atol=1e-5)
