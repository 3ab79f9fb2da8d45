"""Aggregate evaluated runs (several seeds) as mean ± std, with the paper's outlier rule shown, not hidden.

The paper averages 5 runs and, for Multi-dSprites, filters one run "based on its high reconstruction
loss compared to other runs" (1.93e-3 against 1.49–1.57e-3), marking such results. Here a run is that
outlier when its final reconstruction loss (``loss`` in ``eval.json``) is both

* far from the others in robust terms: modified z-score ``0.6745·(loss − median) / MAD > z_threshold``
  (Iglewicz & Hoaglin's 3.5), and
* materially worse: ``loss > (1 + min_gap) · median`` (default 10 %), so that near-identical losses with a
  tiny MAD are not flagged.

At most one run is flagged (the worst), and only with three runs or more. The report shows every run,
the statistics over all runs, and the statistics without the outlier, labelled as such.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .runs import EVAL_NAME

DEFAULT_METRICS = ("ari_fg", "ari", "macc", "miou", "acc")
Z_THRESHOLD = 3.5
MIN_GAP = 0.10

__all__ = ["find_outlier", "load_results", "aggregate", "Report", "format_report"]


def find_outlier(losses: Sequence[float], z_threshold: float = Z_THRESHOLD, min_gap: float = MIN_GAP
                 ) -> Optional[int]:
    """Index of the run whose loss is an outlier by the rule in the module docstring, or None."""
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"losses must be a 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"losses must be finite, got {x.tolist()}")
    if len(x) < 3:
        return None
    worst = int(np.argmax(x))
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    if x[worst] <= (1 + min_gap) * med:
        return None
    # MAD = 0 (most runs identical) with a materially worse run: infinitely far, an outlier.
    z = math.inf if mad == 0 else 0.6745 * (x[worst] - med) / mad
    return worst if z > z_threshold else None


def load_results(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The ``eval.json`` of each run folder (or a JSON file path given directly)."""
    if not run_dirs:
        raise ValueError("give at least one run folder")
    out = []
    for r in run_dirs:
        p = pathlib.Path(r)
        path = p / EVAL_NAME if p.is_dir() else p
        if not path.is_file():
            raise FileNotFoundError(f"no {EVAL_NAME} in {p}: run `dtifast eval {p}` first")
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if "loss" not in res:
            raise ValueError(f"{path} has no 'loss' entry; is it a dtifast eval output?")
        res.setdefault("run", str(p))
        out.append(res)
    return out


@dataclass
class Report:
    """Per-run values and their aggregates."""
    runs: list[str]
    metrics: list[str]
    values: dict[str, list[float]]              # metric (and "loss") -> one value per run
    outlier: Optional[int]
    all_runs: dict[str, tuple[float, float]] = field(default_factory=dict)        # metric -> (mean, std)
    without_outlier: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "metrics": self.metrics, "values": self.values,
                "outlier": None if self.outlier is None else self.runs[self.outlier],
                "mean_std": {k: list(v) for k, v in self.all_runs.items()},
                "mean_std_without_outlier": {k: list(v) for k, v in self.without_outlier.items()}}


def aggregate(results: Sequence[dict[str, Any]], metrics: Optional[Sequence[str]] = None,
              z_threshold: float = Z_THRESHOLD, min_gap: float = MIN_GAP) -> Report:
    """Mean and (population) standard deviation of each metric over runs, with and without the outlier.

    Args:
        results: one dict per run with ``loss`` and the metrics (:func:`load_results`).
        metrics: which metrics (default: those of :data:`DEFAULT_METRICS` that every run has).
    """
    if not results:
        raise ValueError("no results to aggregate")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if all(m in r for r in results)]
    missing = [(r.get("run"), m) for r in results for m in metrics if m not in r]
    if missing:
        raise ValueError(f"metrics missing from some runs: {missing[:5]}")
    names = ["loss", *metrics]
    values = {m: [float(r[m]) for r in results] for m in names}
    outlier = find_outlier(values["loss"], z_threshold, min_gap)
    rep = Report([str(r.get("run")) for r in results], list(metrics), values, outlier)
    for m in names:
        v = np.asarray(values[m])
        rep.all_runs[m] = (float(v.mean()), float(v.std()))
        if outlier is not None:
            kept = np.delete(v, outlier)
            rep.without_outlier[m] = (float(kept.mean()), float(kept.std()))
    return rep


def _fmt(m: str, v: float) -> str:
    # Scores as percentages (the paper's tables), the loss in scientific notation.
    return f"{v:.3e}" if m == "loss" else f"{100 * v:.1f}"


def format_report(rep: Report) -> str:
    """A plain-text table: one row per run (the outlier marked), then mean ± std rows."""
    names = ["loss", *rep.metrics]
    width = max(26, *(len(r) for r in rep.runs)) + 2
    lines = ["run".ljust(width) + "".join(n.rjust(16) for n in names)]
    for i, run in enumerate(rep.runs):
        tag = "  <- outlier (high loss)" if i == rep.outlier else ""
        lines.append(run.ljust(width) + "".join(_fmt(n, rep.values[n][i]).rjust(16) for n in names) + tag)

    def row(label: str, stats: dict[str, tuple[float, float]]) -> str:
        cells = []
        for n in names:
            mean, std = stats[n]
            cell = f"{mean:.3e}±{std:.1e}" if n == "loss" else f"{100 * mean:.1f} ± {100 * std:.1f}"
            cells.append(cell.rjust(16))
        return label.ljust(width) + "".join(cells)

    lines.append(row(f"mean ± std ({len(rep.runs)} runs)", rep.all_runs))
    if rep.outlier is not None:
        lines.append(row(f"without outlier ({len(rep.runs) - 1})", rep.without_outlier))
        lines.append(f"outlier: {rep.runs[rep.outlier]} (final loss {rep.values['loss'][rep.outlier]:.3e} against "
                     f"median {float(np.median(rep.values['loss'])):.3e}); scores are shown with and without it")
    else:
        lines.append("no outlier run by final reconstruction loss")
    return "\n".join(lines)
