"""What a patching sweep found, and its JSON file.

:class:`PatchingResult` holds, per site, the metric of every patched run ``[N, layers,
positions]`` and its effect: the fraction of the clean-corrupt gap recovered (activation
patching) or the indirect effect on the answer's probability (causal tracing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from statetap.extract import write_atomically

RESULT_FILE = "patching.json"


@dataclass
class PatchingResult:
    """One sweep over sites x layers x positions.

    Attributes:
        method: ``"activation patching"`` or ``"causal tracing"``.
        sites: the patched sites; ``layers[site]`` their layers; ``positions`` the token
            positions.
        clean, corrupt: ``[N]`` metric of the clean and the corrupted run per prompt (causal
            tracing: the answer's probability, the corrupted one averaged over noise samples).
        patched: per site ``[N, layers, positions]``, the patched runs' metric.
        effect: per site ``[N, layers, positions]``: fraction of the gap recovered (NaN for
            a prompt with no gap) or indirect effect ``p(restored) - p(corrupted)``.
        tokens: optional ``[N][L]`` token strings (plot labels).
        meta: free-form provenance (model, task, options).
    """

    method: str
    sites: list[str]
    layers: dict[str, list[int]]
    positions: list[int]
    clean: torch.Tensor
    corrupt: torch.Tensor
    patched: dict[str, torch.Tensor]
    effect: dict[str, torch.Tensor]
    tokens: list[list[str]] | None = None
    meta: dict = field(default_factory=dict)

    def mean_effect(self, site: str) -> torch.Tensor:
        """``[layers, positions]``: the effect at ``site`` averaged over prompts (prompts with
        no gap left out)."""
        if site not in self.effect:
            raise KeyError(f"no site {site!r} in this result; it has {self.sites}")
        return self.effect[site].nanmean(0)

    def peak(self, site: str) -> tuple[int, int, float]:
        """``(layer, position, mean effect)`` where the mean effect at ``site`` is largest in
        magnitude."""
        mean = self.mean_effect(site).nan_to_num(0)
        row, column = divmod(int(mean.abs().argmax()), mean.shape[1])
        return self.layers[site][row], self.positions[column], float(mean[row, column])

    def to_json(self) -> dict:
        """Plain lists: every tensor as nested lists (NaN as null)."""
        plain = _nested
        return dict(
            method=self.method,
            sites=self.sites,
            layers=self.layers,
            positions=self.positions,
            clean=plain(self.clean),
            corrupt=plain(self.corrupt),
            patched={site: plain(value) for site, value in self.patched.items()},
            effect={site: plain(value) for site, value in self.effect.items()},
            mean_effect={site: plain(self.mean_effect(site)) for site in self.sites},
            tokens=self.tokens,
            meta=self.meta,
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``patching.json`` into ``folder`` (created) atomically; returns its path."""
        path = Path(folder) / RESULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=1)
        write_atomically(path, lambda target: Path(target).write_text(text, encoding="utf-8"))
        return path


def _nested(tensor: torch.Tensor):
    """``tensor`` as nested lists with NaN as None (JSON has no NaN)."""
    values = tensor.float().tolist()

    def clean(value):
        if isinstance(value, list):
            return [clean(v) for v in value]
        return None if value != value else value

    return clean(values)


def load_result(folder: str | Path) -> PatchingResult:
    """The :class:`PatchingResult` that :meth:`PatchingResult.save` wrote into ``folder``."""
    path = Path(folder) / RESULT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run 'statetap patch' first")
    data = json.loads(path.read_text(encoding="utf-8"))

    def tensor(value) -> torch.Tensor:
        return torch.tensor(_nan(value), dtype=torch.float32)

    return PatchingResult(
        method=data["method"],
        sites=data["sites"],
        layers=data["layers"],
        positions=data["positions"],
        clean=tensor(data["clean"]),
        corrupt=tensor(data["corrupt"]),
        patched={site: tensor(v) for site, v in data["patched"].items()},
        effect={site: tensor(v) for site, v in data["effect"].items()},
        tokens=data["tokens"],
        meta=data["meta"],
    )


def _nan(value):
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return float("nan") if value is None else value
