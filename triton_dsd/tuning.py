"""Tuning tools above the dispatch layer: the sweep behind ``triton-dsd tune``, the merge of
torchrun shards, and :func:`chosen_config`, which shows what a call would launch.

The store itself (folders, format, lookup) is ``store.py``; the config each launch gets is
decided in ``dispatch.py``; the spaces and defaults are ``configs.py``.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional

import torch

from triton_dsd import _runtime, configs, dispatch, keys, problems as P, registry, store

FAMILIES = tuple(registry.FAMILIES)


def reset() -> None:
    """Forget loaded files, memoised choices and issued warnings (tests, after a sweep)."""
    dispatch.reset()


def chosen_config(fn: Callable, *args, **kwargs) -> List[dict]:
    """The kernels and configs ``fn(*args, **kwargs)`` would launch, without running them.

    e.g. ``chosen_config(triton_dsd.dsd_conv2d, x, dw, db, pw, pb, 1, 'same', 2)`` ->
    ``[{'kernel': 'dsd_fwd_kernel', 'family': 'dsd_fwd', 'key': ..., 'config': {...}, 'source': 'exact'}]``
    (source: exact, nearest, tuned or default).
    """
    out = []
    with torch.no_grad(), _runtime.capture_launches() as calls:
        fn(*args, **kwargs)
    for rec in calls:
        name = rec.kernel.fn.__name__
        fam = registry.family_of_kernel(name)
        entry = dict(kernel=name, family=fam.name if fam else None,
                     config={k: v for k, v in rec.kwargs.items()
                             if k.startswith("BLOCK_") or k in ("num_warps", "num_stages")})
        if fam is not None and rec.meta.get("family") == fam.name:
            entry["key"], entry["source"] = rec.meta["key"], rec.meta["source"]
        out.append(entry)
    return out


def _progress(done: int, total: int, t0: float, label: str) -> None:
    width = 28
    frac = done / max(total, 1)
    el = time.time() - t0
    eta = el / done * (total - done) if done else 0.0
    bar = "#" * int(width * frac) + "." * (width - int(width * frac))
    sys.stderr.write(f"\r[{bar}] {done}/{total} {label[:60]:<60} elapsed {el:5.0f}s ETA {eta:5.0f}s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def sweep(problems: Iterable[P.Problem], out_dir: str, max_candidates: Optional[int] = None,
          rank: int = 0, world: int = 1, progress: bool = True) -> Dict[str, int]:
    """Tune every (problem, kernel family); winners are merged into ``out_dir`` as they come.

    Counts: ``tuned`` (measured now), ``stored`` (already in ``out_dir`` before this sweep:
    resumed, not measured again), ``shared`` (the key is one another problem of this sweep
    already has, e.g. the pointwise GEMMs of two dilations), ``failed`` (no candidate built).
    Under torchrun each rank takes every world-th problem and writes a shard folder; rank 0
    merges the shards once all ranks are done (:func:`merge_shards`).
    """
    todo = list(problems)[rank::world]
    stats = dict(tuned=0, stored=0, shared=0, failed=0)
    seen = set()
    t0 = time.time()
    root = out_dir if world == 1 else os.path.join(out_dir, f".shard{rank}")
    for i, prob in enumerate(todo):
        dev, dt = store.device_name(prob.device), store.dtype_name(prob.dtype)
        for family, fields, default, run in P.tunables(prob):
            key = keys.make_key(fields)
            if (family, key, dev, dt) in seen:
                stats["shared"] += 1
                continue
            seen.add((family, key, dev, dt))
            done_before = {**(store.read(store.file_path(out_dir, family, dev, dt), family) or {}),
                           **(store.read(store.file_path(root, family, dev, dt), family) or {})}
            if key in done_before:
                stats["stored"] += 1
                continue
            space = registry.family(family).space(fields, prob.dtype.itemsize)
            cands = configs.limit(space, max_candidates, default)
            best = dispatch.pick_best(run, cands, dispatch.timer_for(prob.device))
            if best is None:
                stats["failed"] += 1
                continue
            cfg, ms = best
            store.write_entries(root, family, dev, dt, {key: {**cfg, "ms": round(ms, 5)}})
            stats["tuned"] += 1
        if progress:
            _progress(i + 1, len(todo), t0, prob.label())
    return stats


def merge_shards(out_dir: str, world: int) -> int:
    """Rank 0: merge every rank's shard folder into ``out_dir`` and remove the shards."""
    merged = 0
    for r in range(world):
        shard = os.path.join(out_dir, f".shard{r}")
        for path in glob.glob(os.path.join(shard, "*", "*.json")):
            family = os.path.basename(os.path.dirname(path))
            with open(path) as f:
                data = json.load(f)
            if store.validate(data, family) is None:
                store.write_entries(out_dir, family, data["device_name"], data["dtype"],
                                    data["configs"])
                merged += len(data["configs"])
        shutil.rmtree(shard, ignore_errors=True)
    return merged
