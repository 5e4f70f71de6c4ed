"""The upstream code statetap substitutes, and the checks that it is still what statetap expects.

statetap instruments transformers' (and mamba-ssm's) models by pointing module-level functions
of their modeling files at its own for the length of a pass.  Those internals change between
minor releases: transformers 5.24 renamed Mamba's ``cache_params`` argument to ``cache``, and a
pre-hook that still read ``cache_params`` got ``None`` without a word, so every resumed pass
started its scan from zero.  Such drift must fail loudly, never give a wrong number:

* :func:`check_transformers_version` warns when the installed transformers is outside the
  range statetap was tested with (:data:`TESTED_TRANSFORMERS`);
* :func:`cache_argument` finds the name under which a mixer takes its cache, and raises
  :class:`UpstreamDrift` when it takes none that statetap knows;
* every drop-in replacement takes the upstream arguments it knows by name and passes anything
  else to :func:`refuse_unknown`, which raises;
* :meth:`statetap.adapters.base.Adapter.verify` runs a probe pass at ``attach`` and raises
  :class:`UpstreamDrift` naming the function that the model no longer calls.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterable

#: the transformers releases the test suite passed with (oldest, newest)
TESTED_TRANSFORMERS = ("5.23.0", "5.25.0")


class UpstreamDrift(RuntimeError):
    """The installed transformers (or mamba-ssm) no longer has, or no longer calls, a function
    statetap substitutes in the way statetap reads it."""


def package_version(package: str) -> str:
    """The installed version of ``package`` (``"not installed"`` when it is absent)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tested_range() -> str:
    """The tested transformers releases as text: ``"5.23.0 to 5.24.0"``."""
    oldest, newest = TESTED_TRANSFORMERS
    return f"{oldest} to {newest}"


def drift(package: str, function: str, problem: str) -> UpstreamDrift:
    """The error for ``function`` of ``package`` (``"transformers"`` or ``"mamba-ssm"``) not
    being what statetap expects: names the installed version and the tested range."""
    tested = {
        "transformers": f"statetap is tested with transformers {tested_range()}",
        "mamba-ssm": "statetap is tested with mamba-ssm 2.3.2.post1",
        "statetap": "statetap.models are statetap's own, so this is a statetap bug",
    }[package]
    return UpstreamDrift(
        f"{package} {package_version(package)}: {function} {problem}; {tested}. Install a "
        f"tested version (see the lock file) or report this so that statetap can follow the "
        f"change; statetap refuses to instrument the model rather than give wrong results."
    )


#: keyword arguments of a model's forward (transformers' ``TransformersKwargs``) that
#: transformers 5.25 hands on through the mixers to the functions statetap substitutes, and that
#: change nothing a recurrence computes: the drop-ins accept and ignore them (Zamba2's layers
#: also hand their Mamba mixer the attention's rotary ``position_embeddings``).  Others of that
#: family (``cu_seq_lens_q``, ``max_length_q``, ``is_causal``, ...) would change the result and
#: are refused like any unknown argument.
OUTPUT_ONLY_ARGUMENTS = frozenset(
    {
        "output_hidden_states",
        "output_attentions",
        "output_router_logits",
        "num_items_in_batch",
        "position_ids",
        "position_embeddings",  # Zamba2's layers hand the rotary cos/sin to the Mamba mixer
        "use_cache",  # Qwen3-Next's blocks hand it on to the delta layers' functions
    }
)


def refuse_unknown(package: str, function: str, unknown: dict) -> None:
    """Raise :class:`UpstreamDrift` when a drop-in for ``function`` received keyword arguments
    it does not know (``unknown``: what its ``**kwargs`` caught), other than
    :data:`OUTPUT_ONLY_ARGUMENTS`."""
    refused = sorted(set(unknown) - OUTPUT_ONLY_ARGUMENTS)
    if refused:
        raise drift(
            package,
            function,
            f"was called with keyword arguments statetap does not handle: {refused}",
        )


def cache_argument(package: str, forward: Callable, names: Iterable[str]) -> str:
    """The first of ``names`` that ``forward`` (a mixer's ``forward``) takes as a parameter.

    Raises:
        UpstreamDrift: it takes none of them.
    """
    parameters = inspect.signature(forward).parameters
    for name in names:
        if name in parameters:
            return name
    raise drift(
        package,
        forward.__qualname__,
        f"takes none of the cache arguments statetap knows ({', '.join(names)}); its "
        f"parameters are ({', '.join(parameters)})",
    )


def check_transformers_version() -> None:
    """Warn (once per process) when the installed transformers is outside the tested range."""
    _warn_untested(package_version("transformers"))


@functools.cache
def _warn_untested(version: str) -> None:
    from packaging.version import Version

    oldest, newest = (Version(v) for v in TESTED_TRANSFORMERS)
    if not oldest <= Version(version) <= newest:
        warnings.warn(
            f"statetap: transformers {version} is outside the tested range {tested_range()}; "
            f"attach verifies that every substituted function is still called, but results "
            f"are only tested within that range",
            stacklevel=4,
        )
