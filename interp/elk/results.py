"""What an ELK run found: per-probe AUROCs, the model's own AUROCs, the anomaly detector.

Rows are plain dicts so that the JSON file is the whole record:

* ``probes``: ``probe, site, layer, train, test, auroc_truth, auroc_bob, n, gap_recovered``
  (one per probe, feature site, layer, training set and test set; ``layer`` is the layer's
  index in the model, a hybrid's state sites naming its recurrent layers, or ``"all"``; an
  AUROC is None where the test set holds one class of those labels, ``gap_recovered`` is None
  off Bob's test sets);
* ``model``: ``test, auroc_truth, auroc_bob, n`` of the model's log-odds;
* ``anomaly``: ``site, probe, auroc, n_fit, n_normal, n_anomalous``;
* ``meta``: the model, its identity (``statetap.interp.provenance.model_identity``), the
  recipe, the config;
* ``control``: the random-model control's results (the same fields, as a dict; None when the
  run had none): the same probes on a model of the same architecture with random weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from statetap.extract import write_json_atomically

RESULTS_FILE = "elk.json"


@dataclass
class ElkResults:
    """The rows of one ELK run (module docstring)."""

    probes: list[dict]
    model: list[dict]
    anomaly: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    control: dict | None = None

    @property
    def control_results(self) -> ElkResults | None:
        """The random-model control as :class:`ElkResults` (None without one)."""
        return None if self.control is None else ElkResults(**self.control)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder / "elk.json"`` atomically; returns its path."""
        return write_json_atomically(Path(folder) / RESULTS_FILE, asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> ElkResults:
        """The results :meth:`save` wrote to ``folder`` (or the JSON file itself)."""
        path = Path(folder)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no ELK results at {path}")
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys(r["site"] for r in self.probes))

    @property
    def probe_names(self) -> list[str]:
        return list(dict.fromkeys(r["probe"] for r in self.probes))

    def rows(self, **where: object) -> list[dict]:
        """The probe rows whose fields equal ``where`` (``rows(probe="lr", test="B")``)."""
        return [r for r in self.probes if all(r[k] == v for k, v in where.items())]

    def model_row(self, test: str) -> dict:
        """The model's own row on ``test``."""
        found = [r for r in self.model if r["test"] == test]
        if not found:
            raise KeyError(
                f"no model row for test set {test!r}; have {[r['test'] for r in self.model]}"
            )
        return found[0]

    def best(
        self, probe: str, site: str, train: str = "A", test: str = "B", against: str = "truth"
    ) -> dict:
        """The row of ``probe`` on ``site`` at the layer with the highest ``auroc_{against}``
        on ``test`` (the best layer, chosen on the test set itself, as Mallen et al. report)."""
        key = f"auroc_{against}"
        found = [r for r in self.rows(probe=probe, site=site, train=train, test=test) if r[key]]
        if not found:
            raise KeyError(f"no {key} for {probe} on {site}, {train} -> {test}")
        return max(found, key=lambda r: r[key])

    def markdown(self, train: str = "A", test: str = "B") -> str:
        """A table: per probe, per site, the best layer's AUROC against the truth and against
        Bob's labels on ``test`` for probes trained on ``train``, with the gap recovered, and
        the random-model control's best AUROC against the truth beside it (``random 0.71``)."""
        sites = self.sites
        control = self.control_results
        lines = [
            "| probe | " + " | ".join(sites) + " |",
            "| --- | " + " | ".join("---" for _ in sites) + " |",
        ]
        for probe in self.probe_names:
            cells = []
            for site in sites:
                try:
                    r = self.best(probe, site, train, test)
                except KeyError:
                    cells.append("–")
                    continue
                gap = "" if r["gap_recovered"] is None else f", gap {r['gap_recovered']:.0%}"
                bob = "–" if r["auroc_bob"] is None else f"{r['auroc_bob']:.3f}"
                cell = f"{r['auroc_truth']:.3f} / {bob} (L{r['layer']}{gap})"
                if control is not None:
                    try:
                        twin = control.best(probe, site, train, test)["auroc_truth"]
                        cell += f"; random {twin:.3f}"
                    except KeyError:
                        cell += "; random –"
                cells.append(cell)
            lines.append(f"| {probe} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
