"""``compare(model, converted, x)``: per-layer differences between a model and its converted copy.

A final-output comparison can hide a wrong layer: a residual branch scaled by 1e-6 (ConvNeXt's
layer scale) changes the output by almost nothing whatever the branch computes. ``compare``
runs both models on the same input with forward hooks on every module and reports, for each
module path present in both, the largest absolute difference of its output and that
difference relative to the largest magnitude of the original's output.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
from torch import nn


@dataclasses.dataclass
class LayerDiff:
    """One module path: its class in each model, its output shape, and the differences."""
    path: str
    original: str
    converted: str
    shape: tuple
    max_abs: float
    max_rel: float  # max_abs / max |original output| (0 when both are all zero)


class Comparison(list):
    """The rows of :func:`compare` in the order the original model ran them; printing it gives a
    table. ``worst(n)`` are the n rows with the largest relative difference."""

    def worst(self, n: int = 5) -> List[LayerDiff]:
        return sorted(self, key=lambda r: -r.max_rel)[:n]

    def __str__(self) -> str:
        head = ["module", "original", "converted", "shape", "max |diff|", "max rel"]
        body = [[r.path or "(model)", r.original, r.converted, "x".join(map(str, r.shape)),
                 f"{r.max_abs:.3g}", f"{r.max_rel:.3g}"] for r in self]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(head)] + [line(b) for b in body])


def _first_tensor(out) -> Optional[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _record(model: nn.Module, x, order: Optional[List[str]] = None) -> Dict[str, tuple]:
    """path -> (class name, output) of every module of ``model`` run on ``x``."""
    outs: Dict[str, tuple] = {}
    handles = []
    for path, mod in model.named_modules():
        def hook(m, args, out, path=path):
            t = _first_tensor(out)
            if t is not None and path not in outs:
                outs[path] = (type(m).__name__, t.detach().clone())
                if order is not None:
                    order.append(path)
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def compare(model: nn.Module, converted: nn.Module, x) -> Comparison:
    """Run ``model`` and ``converted`` on ``x`` (each in its current train/eval mode; no
    gradients) and compare every module output the two share by path and shape, in float64.

    A train-mode batch norm updates its running statistics on each run: call ``compare`` on
    copies, or in eval mode, if those matter."""
    order: List[str] = []
    ref = _record(model, x, order)
    new = _record(converted, x)
    rows = Comparison()
    for path in order:
        if path not in new:
            continue
        (cls_a, a), (cls_b, b) = ref[path], new[path]
        if a.shape != b.shape:
            continue
        a64, b64 = a.double(), b.double()
        diff = (a64 - b64).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        scale = float(a64.abs().max()) if a64.numel() else 0.0
        rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        rows.append(LayerDiff(path, cls_a, cls_b, tuple(a.shape), max_abs, rel))
    return rows
