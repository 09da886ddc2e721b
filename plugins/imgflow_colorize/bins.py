"""The 313 quantised ab bins of Zhang et al. (ECCV 2016), and what training needs from them.

ECCV16 turns colorization into classification: ab space is cut into a grid of step 10 and the 313
cells inside the sRGB gamut become the classes; the network predicts a distribution over them at
every pixel of a 1/4-resolution grid. Training needs three things from the bins (SPEC §1,
"Training facts"):

  soft targets    a pixel's true ab spread over its ``k`` nearest bin centres with Gaussian
                  weights exp(-d² / 2σ²) (σ = 5; the paper uses k = 5), normalised to sum to 1:
                  a pixel between two bins teaches both, which a one-hot target would not;
  rebalancing     a per-bin loss weight ∝ ((1 - λ)·p̃ + λ/Q)^-1 (λ = 0.5, Q = 313), normalised so
                  that its expectation under p̃ is 1: without it the loss is dominated by the
                  desaturated bins most pixels fall in, and predictions come out greyish;
  the prior p̃     the ImageNet distribution shipped with the bins (``data/ab_bins.csv``), or one
                  re-estimated from the user's own images: bin counts smoothed with the same
                  Gaussian kernel over bin centres.

The bins file lists the centres in the order the released ECCV16 network indexes its outputs, so
its 1x1 decoding conv (``model_out``) holds exactly these centres / 110.

Imports torch at import time; the trainer imports this module lazily (in ``setup``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

BINS_FILE = Path(__file__).resolve().parent / "data" / "ab_bins.csv"
BIN_COUNT = 313
GRID_STEP = 10.0


@dataclass(frozen=True)
class AbBins:
    """Bin centres ``(Q, 2)`` in Lab units (a, b) and their prior ``(Q,)``, both float64."""

    centres: torch.Tensor
    prior: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.centres.shape[0])


@lru_cache(maxsize=4)
def load_bins(path: Path = BINS_FILE) -> AbBins:
    """Read the bins file (``index,a,b,prior``; ``#`` lines are comments) and check it.

    A damaged package data file must not train silently against wrong classes, so the count,
    the index order, the grid and the prior's sum are all checked.
    """
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    except OSError as exc:
        raise RuntimeError(f"{path}: cannot read the colour bins file: {exc.strerror or exc} "
                           "(fix: reinstall imgflow; the file is package data)") from exc
    problem = _bins_problem(rows)
    if problem:
        raise RuntimeError(f"{path}: not the 313-bin table: {problem} (fix: reinstall imgflow; the file is "
                           "package data)")
    centres = torch.tensor([[float(r["a"]), float(r["b"])] for r in rows], dtype=torch.float64)
    prior = torch.tensor([float(r["prior"]) for r in rows], dtype=torch.float64)
    return AbBins(centres=centres, prior=prior / prior.sum())


def _bins_problem(rows: list[dict[str, str]]) -> str | None:
    if len(rows) != BIN_COUNT:
        return f"expected {BIN_COUNT} rows, got {len(rows)}"
    try:
        if [int(r["index"]) for r in rows] != list(range(BIN_COUNT)):
            return "the index column is not 0..312 in order"
        values = [(float(r["a"]), float(r["b"]), float(r["prior"])) for r in rows]
    except (KeyError, TypeError, ValueError) as exc:
        return f"unreadable row ({type(exc).__name__}: {exc})"
    if any(a % GRID_STEP or b % GRID_STEP for a, b, _ in values):
        return f"a centre is off the grid of step {GRID_STEP:g}"
    total = sum(p for _, _, p in values)
    if min(p for _, _, p in values) < 0 or abs(total - 1.0) > 1e-6:
        return f"the prior is not a distribution (sum {total})"
    return None


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = 5,
                sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets for pixels ``ab`` ``(P, 2)``: the ``neighbours`` nearest bins ``(P, k)``
    (nearest first) and their Gaussian weights ``(P, k)``, which sum to 1 per pixel.

    The weights are computed relative to the nearest bin's distance, so a pixel far outside the
    gamut (every weight underflowing) still gets a valid target instead of 0/0.
    """
    d2 = torch.cdist(ab.float(), centres.to(device=ab.device, dtype=torch.float32)).square()
    near_d2, index = d2.topk(neighbours, dim=1, largest=False, sorted=True)
    weights = torch.exp(-(near_d2 - near_d2[:, :1]) / (2.0 * sigma * sigma))
    return index, weights / weights.sum(dim=1, keepdim=True)


def dense_targets(index: torch.Tensor, weights: torch.Tensor, count: int = BIN_COUNT) -> torch.Tensor:
    """The soft targets as a dense ``(P, Q)`` distribution (for inspection and tests)."""
    out = torch.zeros(index.shape[0], count, dtype=weights.dtype, device=weights.device)
    return out.scatter_(1, index, weights)


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Per-bin loss weights ((1 - λ)·p̃ + λ/Q)^-1, scaled so that Σ p̃·w = 1 (λ = 1: all ones)."""
    prior = prior.double() / prior.sum()
    weights = 1.0 / ((1.0 - lam) * prior + lam / prior.numel())
    return weights / (prior * weights).sum()


def smooth_prior(counts: torch.Tensor, centres: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """An empirical bin distribution from counts, smoothed by a Gaussian kernel over the bin
    centres (σ in ab units), as the paper smooths its ImageNet statistics."""
    counts = counts.double()
    if float(counts.sum()) <= 0:
        raise ValueError("no coloured pixels were counted, so there is no colour distribution to estimate")
    d2 = torch.cdist(centres.double(), centres.double()).square()
    smoothed = torch.exp(-d2 / (2.0 * sigma * sigma)) @ (counts / counts.sum())
    return smoothed / smoothed.sum()


def nearest_bin_counts(index: torch.Tensor, count: int = BIN_COUNT) -> torch.Tensor:
    """How many pixels have each bin as their nearest (the first column of ``soft_encode``)."""
    return torch.bincount(index[:, 0].flatten(), minlength=count).to(torch.float64).cpu()
