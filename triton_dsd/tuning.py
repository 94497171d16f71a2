"""Autotuning: config spaces, the persistent JSON store in ``autotune_configs/``, lookup, the sweep.

Store layout (vLLM-style)::

    autotune_configs/<kernel>/device_name=<GPU>,dtype=<dtype>.json
    {"schema": 1, "kernel": ..., "device_name": ..., "dtype": ..., "triton_version": "3.6.0",
     "configs": {"<problem key>": {"BLOCK_...": .., "num_warps": .., ["num_stages": ..,] "ms": ..}}}

Lookup, per (kernel, problem key, device, dtype): the exact key, else the nearest key of the same
layout, else the default heuristic of ``launch.py`` with one warning. Folders searched, first
hit wins: ``$TRITON_DSD_CONFIG_DIR``, then the user cache (``~/.cache/triton_dsd``, where
``TRITON_DSD_AUTOTUNE=1`` writes), then the configs shipped in the package. A file that is not
JSON, has unknown or missing keys, or was tuned by another Triton major version is skipped with
one warning; a stored config that fails to compile is dropped with one warning and the default
is used. Nothing here ever raises into a forward pass.

A forward never benchmarks unless asked: ``TRITON_DSD_AUTOTUNE=1`` tunes a missing problem on
first use, ``triton-dsd tune`` sweeps a grid.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import triton

if TYPE_CHECKING:  # pragma: no cover
    from triton_dsd.problems import Problem

SCHEMA = 1
FAMILIES = ("depthwise_fwd", "depthwise_bwd_input", "depthwise_bwd_weight", "pointwise_fwd",
            "pointwise_bwd_weight", "dsd_fwd")
#: tunable block sizes per kernel family (num_warps always; num_stages where it pipelines)
BLOCKS = {
    "depthwise_fwd": ("BLOCK_H", "BLOCK_W", "BLOCK_C"),
    "depthwise_bwd_input": ("BLOCK_H", "BLOCK_W", "BLOCK_C"),
    "depthwise_bwd_weight": ("BLOCK_H", "BLOCK_W", "BLOCK_C"),
    "pointwise_fwd": ("BLOCK_P", "BLOCK_M", "BLOCK_K"),
    "pointwise_bwd_weight": ("BLOCK_P", "BLOCK_M", "BLOCK_K"),
    "dsd_fwd": ("BLOCK_P", "BLOCK_M", "BLOCK_K"),
}
_TOP_KEYS = {"schema", "kernel", "device_name", "dtype", "triton_version", "configs"}
_ENTRY_META = {"ms", "tuned_at"}
#: shared memory the pruned spaces may use (fits sm_80's 163 KiB and sm_90's 227 KiB)
SMEM_LIMIT = 160 * 1024

_warned: set = set()
_memo: Dict[tuple, Tuple[dict, str]] = {}
_tables: Dict[str, Tuple[float, Optional[dict]]] = {}
#: the last config each kernel family used: family -> (key, config, source)
last_choice: Dict[str, Tuple[str, dict, str]] = {}
_defaults_only = False


@contextlib.contextmanager
def defaults_only():
    """Within this block every lookup returns the default heuristic, silently (the offline
    compile report uses it to compile exactly the defaults)."""
    global _defaults_only
    saved, _defaults_only = _defaults_only, True
    try:
        yield
    finally:
        _defaults_only = saved


def _warn_once(tag, msg: str) -> None:
    if tag not in _warned:
        _warned.add(tag)
        warnings.warn(f"triton_dsd: {msg}", RuntimeWarning, stacklevel=3)


def reset() -> None:
    """Forget loaded files, memoised choices and issued warnings (tests, after a sweep)."""
    _warned.clear()
    _memo.clear()
    _tables.clear()
    last_choice.clear()


# ----------------------------------------------------------------------------- keys
def bucket(n: int) -> int:
    """Power-of-two bucket of a size (channel counts, pixels)."""
    return triton.next_power_of_2(max(int(n), 1))


def make_key(fields: Dict[str, object]) -> str:
    return ",".join(f"{k}={fields[k]}" for k in sorted(fields))


def parse_key(key: str) -> Dict[str, str]:
    out = {}
    for part in key.split(","):
        k, _, v = part.partition("=")
        out[k] = v
    return out


def _distance(a: Dict[str, str], b: Dict[str, str]) -> float:
    """log2 distance between two problem keys; inf when a categorical field differs."""
    if a.keys() != b.keys():
        return math.inf
    d = 0.0
    for k in a:
        va, vb = a[k], b[k]
        if va == vb:
            continue
        try:
            xs = [float(v) for v in va.split("x")]
            ys = [float(v) for v in vb.split("x")]
        except ValueError:
            return math.inf  # layout and other categorical fields must match
        if len(xs) != len(ys):
            return math.inf
        d += sum(abs(math.log2(x + 1) - math.log2(y + 1)) for x, y in zip(xs, ys))
    return d


# ----------------------------------------------------------------------------- store
def shipped_dir() -> str:
    from triton_dsd import autotune_configs
    return os.path.dirname(os.path.abspath(autotune_configs.__file__))


def user_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "triton_dsd", "autotune_configs")


def search_dirs() -> List[str]:
    dirs = []
    env = os.environ.get("TRITON_DSD_CONFIG_DIR")
    if env:
        dirs.append(env)
    dirs += [user_dir(), shipped_dir()]
    return dirs


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu_interpreter"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def file_path(root: str, family: str, device: str, dtype: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    return os.path.join(root, family, f"device_name={safe},dtype={dtype}.json")


def _triton_major(version: str) -> str:
    return str(version).split(".")[0]


def validate(data, family: str) -> Optional[str]:
    """None if ``data`` is a valid store file for ``family``, else what is wrong with it."""
    if not isinstance(data, dict):
        return "not a JSON object"
    keys = set(data)
    if keys != _TOP_KEYS:
        return (f"unknown keys {sorted(keys - _TOP_KEYS)}" if keys - _TOP_KEYS
                else f"missing keys {sorted(_TOP_KEYS - keys)}")
    if data["schema"] != SCHEMA:
        return f"schema {data['schema']!r} (this package reads {SCHEMA})"
    if data["kernel"] != family:
        return f"kernel {data['kernel']!r} in a {family} file"
    if _triton_major(data["triton_version"]) != _triton_major(triton.__version__):
        return (f"tuned with Triton {data['triton_version']}, this is Triton "
                f"{triton.__version__} (another major version)")
    if not isinstance(data["configs"], dict):
        return "`configs` is not an object"
    need = set(BLOCKS[family]) | {"num_warps"}
    allowed = need | {"num_stages"} | _ENTRY_META
    for key, cfg in data["configs"].items():
        if not isinstance(cfg, dict):
            return f"entry {key!r} is not an object"
        if set(cfg) - allowed:
            return f"entry {key!r} has unknown keys {sorted(set(cfg) - allowed)}"
        if need - set(cfg):
            return f"entry {key!r} misses {sorted(need - set(cfg))}"
        for k in need | ({"num_stages"} & set(cfg)):
            v = cfg[k]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                return f"entry {key!r}: {k}={v!r} is not a positive int"
    return None


def _read(path: str, family: str) -> Optional[dict]:
    """The configs of one store file, or None (missing, or invalid: one warning)."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return None
    cached = _tables.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    table = None
    try:
        with open(path) as f:
            data = json.load(f)
        problem = validate(data, family)
    except (OSError, ValueError) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem:
        _warn_once(("file", path, mtime),
                   f"ignoring config file {path}: {problem}; using default configs instead")
    else:
        table = {k: {p: v for p, v in c.items() if p not in _ENTRY_META}
                 for k, c in data["configs"].items()}
    _tables[path] = (mtime, table)
    return table


def load_table(family: str, device: str, dtype: str) -> Dict[str, dict]:
    """All valid stored configs for one kernel/device/dtype; earlier folders win."""
    merged: Dict[str, dict] = {}
    for root in reversed(search_dirs()):
        table = _read(file_path(root, family, device, dtype), family)
        if table:
            merged.update(table)
    return merged


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock beside ``path`` (flock), so concurrent writers merge, never clobber."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - no flock on this platform
            pass
        yield


def write_entries(root: str, family: str, device: str, dtype: str,
                  entries: Dict[str, dict]) -> str:
    """Merge ``entries`` into the store file atomically (lock, read, merge, temp file, rename)."""
    path = file_path(root, family, device, dtype)
    with _locked(path):
        current: Dict[str, dict] = {}
        try:
            with open(path) as f:
                data = json.load(f)
            if validate(data, family) is None:
                current = data["configs"]
            else:
                _warn_once(("overwrite", path), f"replacing invalid config file {path}")
        except (OSError, ValueError):
            pass
        current.update(entries)
        data = dict(schema=SCHEMA, kernel=family, device_name=device, dtype=dtype,
                    triton_version=triton.__version__,
                    configs={k: current[k] for k in sorted(current)})
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_", suffix=".json")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared store must be readable
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _tables.pop(path, None)
    _memo.clear()
    return path


# ----------------------------------------------------------------------------- lookup
def lookup(family: str, fields: Dict[str, object], device: torch.device, dtype: torch.dtype,
           default: Callable[[], dict], tuner: Optional[Callable[[], Optional[dict]]] = None
           ) -> Tuple[dict, str]:
    """(config, source) for one problem; source is exact / nearest / tuned / default."""
    key = make_key(fields)
    if _defaults_only:
        return default(), "default"
    dev, dt = device_name(device), dtype_name(dtype)
    memo_key = (family, key, dev, dt)
    hit = _memo.get(memo_key)
    if hit is None:
        table = load_table(family, dev, dt)
        if key in table:
            hit = (dict(table[key]), "exact")
        elif tuner is not None and os.environ.get("TRITON_DSD_AUTOTUNE", "0") == "1":
            best = tuner()
            hit = (best, "tuned") if best else None
        if hit is None and table:
            want = parse_key(key)
            dist, near = min((_distance(want, parse_key(k)), k) for k in table)
            if dist < math.inf:
                hit = (dict(table[near]), "nearest")
        if hit is None:
            _warn_once(("default", family, dev, dt),
                       f"no tuned {family} config for {dev} / {dt}; using the default heuristic "
                       f"(`triton-dsd tune` measures and stores better ones)")
            hit = (default(), "default")
        _memo[memo_key] = hit
    last_choice[family] = (key, hit[0], hit[1])
    return dict(hit[0]), hit[1]


def reject(family: str, fields: Dict[str, object], device: torch.device, dtype: torch.dtype,
           cfg: dict, error: BaseException, default: dict) -> None:
    """A stored config failed to compile: warn once and use the default for this problem."""
    key = make_key(fields)
    _warn_once(("reject", family, key, str(sorted(cfg.items()))),
               f"stored {family} config {cfg} for {key} failed ({type(error).__name__}: "
               f"{str(error).splitlines()[0][:200] if str(error) else ''}); using the default")
    _memo[(family, key, device_name(device), dtype_name(dtype))] = (default, "default")
    last_choice[family] = (key, default, "default")


def chosen_config(fn: Callable, *args, **kwargs) -> List[dict]:
    """The kernels and configs ``fn(*args, **kwargs)`` would launch, without running them.

    e.g. ``chosen_config(triton_dsd.dsd_conv2d, x, dw, db, pw, pb, 1, 'same', 2)`` ->
    ``[{'kernel': 'dsd_fwd_kernel', 'family': 'dsd_fwd', 'key': ..., 'config': {...}, 'source': 'exact'}]``
    """
    from triton_dsd import launch
    out = []
    with torch.no_grad(), launch.capture_launches() as calls:
        fn(*args, **kwargs)
    for kernel, _grid, _args, kw in calls:
        name = kernel.fn.__name__
        family = _FAMILY_OF_KERNEL.get(name)
        entry = dict(kernel=name, family=family,
                     config={k: v for k, v in kw.items()
                             if k.startswith("BLOCK_") or k in ("num_warps", "num_stages")})
        if family in last_choice:
            entry["key"], _, entry["source"] = last_choice[family]
        out.append(entry)
    return out


_FAMILY_OF_KERNEL = {
    "depthwise_fwd_kernel": "depthwise_fwd", "depthwise_bwd_input_kernel": "depthwise_bwd_input",
    "depthwise_bwd_weight_kernel": "depthwise_bwd_weight", "pointwise_fwd_kernel": "pointwise_fwd",
    "pointwise_bwd_weight_kernel": "pointwise_bwd_weight", "dsd_fwd_kernel": "dsd_fwd",
}


# ----------------------------------------------------------------------------- spaces
def _p2(lo: int, hi: int) -> List[int]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= 2
    return out


def config_space(family: str, fields: Dict[str, object], elem_bytes: int) -> List[dict]:
    """Candidate configs for one problem, pruned: no tile larger than the problem, shared memory
    within SMEM_LIMIT, and for depthwise a tile whose input footprint (tile plus the dilated
    halo) stays within 64 KiB, so large dilations get smaller spatial tiles."""
    f = {k: str(v) for k, v in fields.items()}
    out = []
    if family.startswith("depthwise"):
        kh, kw = (int(v) for v in f["K"].split("x"))
        dh, dw = (int(v) for v in f["d"].split("x"))
        sh, sw = (int(v) for v in f["s"].split("x"))
        oh, ow = (int(v) for v in f["HW"].split("x"))
        C = int(f["C"])
        cl = f["layout"] == "cl"
        scored = []
        for bc in _p2(1, min(C, 128)):
            for bw in _p2(1, min(ow, 128)):
                for bh in _p2(1, min(oh, 32)):
                    tile = bh * bw * bc
                    if not (min(256, C * oh * ow) <= tile <= 4096):
                        continue
                    if cl and bc < min(8, C) or not cl and bw < min(16, ow):
                        continue
                    # input bytes one tile touches: the tile plus its dilated halo
                    foot = (((bh - 1) * sh + 1 + dh * (kh - 1))
                            * ((bw - 1) * sw + 1 + dw * (kw - 1)) * bc * elem_bytes)
                    for warps in (2, 4, 8):
                        if tile // (32 * warps) in (2, 4, 8, 16):
                            scored.append((foot, dict(BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc,
                                                      num_warps=warps)))
        if not scored:
            return out
        # halo-aware: keep tiles whose footprint stays in L1 (64 KiB); when the dilation is so
        # large that none does, keep the smallest-footprint tiles
        cap = max(64 * 1024, 2 * min(fp for fp, _ in scored))
        return [c for fp, c in scored if fp <= cap]
    if family in ("pointwise_fwd", "pointwise_bwd_weight"):
        P, M, K = int(f["P"]), int(f["M"]), int(f["C"])
        for bp in _p2(32, max(32, min(P, 256))):
            for bm in _p2(16, max(16, min(M, 256))):
                for bk in _p2(16, max(16, min(K, 128))):
                    for warps in (4, 8):
                        for stages in (2, 3, 4):
                            a, b = (bp, bm) if family == "pointwise_fwd" else (bm, bk)
                            red = bk if family == "pointwise_fwd" else bp
                            if stages * (a + b) * red * elem_bytes > SMEM_LIMIT:
                                continue
                            acc = bp * bm if family == "pointwise_fwd" else bm * bk
                            if not 16 <= acc // (32 * warps) <= 128:
                                continue
                            out.append(dict(BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps,
                                            num_stages=stages))
        return out
    if family == "dsd_fwd":
        P = int(f["HW"].split("x")[0]) * int(f["HW"].split("x")[1])
        M, CM = int(f["M"]), int(f["C"])
        for bp in _p2(32, max(32, min(P, 128))):
            for bm in _p2(16, max(16, min(M, 256))):
                for bk in _p2(16, max(16, min(CM, 64))):
                    for warps in (4, 8):
                        for stages in (1, 2, 3):
                            if (stages * bk * bm + bp * bk) * elem_bytes > SMEM_LIMIT:
                                continue
                            if not (bp * bm + bp * bk) // (32 * warps) <= 160:
                                continue
                            out.append(dict(BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps,
                                            num_stages=stages))
        return out
    raise ValueError(f"unknown kernel family {family!r}")


# ----------------------------------------------------------------------------- timing, sweep
def timer_for(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """``triton.testing.do_bench`` on a GPU; a wall-clock timer under the interpreter (real as
    code, meaningless as speed)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        def bench(fn):
            return float(do_bench(fn, warmup=5, rep=25))
        return bench

    def wall(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return wall


def pick_best(run: Callable[[dict], object], candidates: Sequence[dict],
              timer: Callable[[Callable[[], object]], float]) -> Optional[Tuple[dict, float]]:
    """Time every candidate (a failing one is skipped); the fastest, or None if none ran."""
    best = None
    for cfg in candidates:
        try:
            ms = timer(lambda: run(cfg))
        except Exception:  # a candidate that does not compile or fit is not a winner
            continue
        if best is None or ms < best[1]:
            best = (cfg, ms)
    return best


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


def limit(candidates: List[dict], n: Optional[int], default: dict) -> List[dict]:
    """At most n candidates: the default first, then an even spread of the space."""
    cands = [default] + [c for c in candidates if c != default]
    if n is None or len(cands) <= n:
        return cands
    step = len(cands[1:]) / max(n - 1, 1)
    return [cands[0]] + [cands[1 + int(i * step)] for i in range(n - 1)]


def sweep(problems: Iterable["Problem"], out_dir: str, max_candidates: Optional[int] = None,
          rank: int = 0, world: int = 1, progress: bool = True) -> Dict[str, int]:
    """Tune every (problem, kernel family); winners are merged into ``out_dir`` after each problem.

    Resumes: a (family, key) already stored in ``out_dir`` for this device/dtype is skipped.
    Under torchrun each rank takes every world-th problem and writes a shard file; rank 0
    merges the shards once all ranks are done (``merge_shards``).
    """
    from triton_dsd import problems as P
    todo = list(problems)[rank::world]
    stats = dict(tuned=0, skipped=0, failed=0)
    t0 = time.time()
    for i, prob in enumerate(todo):
        dev, dt = device_name(prob.device), dtype_name(prob.dtype)
        for family, fields, default, run in P.tunables(prob):
            key = make_key(fields)
            root = out_dir if world == 1 else os.path.join(out_dir, f".shard{rank}")
            done_here = {**(_read(file_path(out_dir, family, dev, dt), family) or {}),
                         **(_read(file_path(root, family, dev, dt), family) or {})}
            if key in done_here:
                stats["skipped"] += 1
                continue
            cands = limit(config_space(family, fields, prob.dtype.itemsize), max_candidates,
                          default)
            best = pick_best(run, cands, timer_for(prob.device))
            if best is None:
                stats["failed"] += 1
                continue
            cfg, ms = best
            write_entries(root, family, dev, dt, {key: {**cfg, "ms": round(ms, 5)}})
            stats["tuned"] += 1
        if progress:
            _progress(i + 1, len(todo), t0, prob.label())
    return stats


def merge_shards(out_dir: str, world: int) -> int:
    """Rank 0: merge every rank's shard files into ``out_dir`` and remove the shards."""
    import glob
    import shutil
    merged = 0
    for r in range(world):
        shard = os.path.join(out_dir, f".shard{r}")
        for path in glob.glob(os.path.join(shard, "*", "*.json")):
            family = os.path.basename(os.path.dirname(path))
            with open(path) as f:
                data = json.load(f)
            if validate(data, family) is None:
                write_entries(out_dir, family, data["device_name"], data["dtype"], data["configs"])
                merged += len(data["configs"])
        shutil.rmtree(shard, ignore_errors=True)
    return merged
