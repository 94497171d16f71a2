"""Dispatch: the config each launch runs with, and what happens when it does not build.

Order: an explicit config (the tuner passes one), else the store's exact or nearest entry,
else (only with ``TRITON_DSD_AUTOTUNE=1``) one measured now and stored, else the family's
default. The default is announced by one warning per process that points at the user's call.

A stored or tuned config that does not build falls back to the default with one warning. Only
build and resource errors mean "does not build" (:func:`is_build_error`: Triton's
CompilationError, OutOfResources, PTXASError, an MLIR pass failure, and a config that fails
the static check of :func:`config_problem`); any other exception propagates, so a bug in a
launcher or a kernel is never mistaken for a bad config.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from triton_dsd import _runtime, configs, keys, registry, store

log = logging.getLogger("triton_dsd")

#: the last config each kernel family used: family -> (key, config, source)
last_choice: Dict[str, Tuple[str, dict, str]] = {}
#: configs that failed to build, and configs tuned in this process: (family, key, dev, dtype)
_rejected: Dict[tuple, bool] = {}
_tuned: Dict[tuple, dict] = {}
#: per thread: inside defaults_only()
_LOCAL = threading.local()


def reset() -> None:
    """Forget memoised choices, rejections, tuned configs and issued warnings (tests)."""
    last_choice.clear()
    _rejected.clear()
    _tuned.clear()
    store.reset()
    _runtime.forget_warnings()


@contextlib.contextmanager
def defaults_only():
    """Within this block every launch uses its family's default, silently (the offline
    compile report compiles exactly the defaults)."""
    saved = getattr(_LOCAL, "defaults_only", False)
    _LOCAL.defaults_only = True
    try:
        yield
    finally:
        _LOCAL.defaults_only = saved


def autotune_enabled() -> bool:
    return os.environ.get("TRITON_DSD_AUTOTUNE", "0") == "1"


def _build_errors() -> tuple:
    errs = []
    for mod, name in (("triton.compiler.errors", "CompilationError"),
                      ("triton.runtime.errors", "OutOfResources"),
                      ("triton.runtime.errors", "PTXASError")):
        try:
            errs.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


#: exceptions meaning "this config does not build or fit", across Triton versions
BUILD_ERRORS = _build_errors()


def is_build_error(e: BaseException) -> bool:
    """True if ``e`` says a config does not build or fit (not that something is wrong): the
    errors of BUILD_ERRORS, or an MLIR pass failure (a RuntimeError "PassManager::run failed")."""
    return isinstance(e, BUILD_ERRORS) or (
        isinstance(e, RuntimeError) and "PassManager::run failed" in str(e))


def config_problem(family: str, cfg: dict) -> Optional[str]:
    """Why a well-formed config cannot build (checked before any launch), or None. The form
    (keys present and known, positive ints) is ``store.validate``'s check of every stored
    entry; tuned configs come from the family's space."""
    fam = registry.family(family)
    for k in fam.blocks + ("num_warps",):
        if cfg[k] & (cfg[k] - 1):
            return f"{k}={cfg[k]} is not a power of two"
    if cfg["num_warps"] > 32:
        return f"num_warps={cfg['num_warps']} is more than 32"
    return None


# ----------------------------------------------------------------------------- timing
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
    """Time every candidate; one that does not build is skipped. The fastest, or None."""
    best = None
    for cfg in candidates:
        try:
            ms = timer(lambda: run(cfg))
        except Exception as e:  # noqa: BLE001 - only build errors are skipped
            if is_build_error(e):
                continue
            raise
        if best is None or ms < best[1]:
            best = (cfg, ms)
    return best


# ----------------------------------------------------------------------------- dispatch
def _autotune(family: str, fields: dict, like: torch.Tensor, run: Callable[[dict], object],
              default: dict) -> Optional[dict]:
    if _runtime.capturing():  # recording launches (chosen_config, inspect): never time
        return None
    fam = registry.family(family)
    space = fam.space(fields, like.element_size())
    best = pick_best(run, configs.limit(space, 64, default), timer_for(like.device))
    if best is None:
        return None
    root = store.write_dir()
    try:
        store.write_entries(root, family, store.device_name(like.device),
                            store.dtype_name(like.dtype),
                            {keys.make_key(fields): {**best[0], "ms": round(best[1], 5)}})
    except OSError as e:  # a read-only folder: keep the result for this process only
        _runtime.warn_once(("ro", root), f"triton_dsd: cannot write tuned configs to {root} "
                           f"({e}); the tuned config is used for this process only")
    return best[0]


def _reject(family: str, key: str, cfg: dict, why: str) -> None:
    _runtime.warn_once(("reject", family, key, str(sorted(cfg.items()))),
                       f"triton_dsd: the stored {family} config {cfg} for {key} does not build "
                       f"({why}); using the default config")


def run(family: str, fields: dict, like: torch.Tensor, launch: Callable[[dict], object],
        cfg: Optional[dict] = None):
    """``launch(config)`` with the config this problem gets (see the module docstring)."""
    if cfg is not None:
        return launch(cfg)
    fam = registry.family(family)
    key = keys.make_key(fields)
    dev, dt = store.device_name(like.device), store.dtype_name(like.dtype)
    rk = (family, key, dev, dt)
    chosen, source = None, "default"
    if not getattr(_LOCAL, "defaults_only", False) and rk not in _rejected:
        hit = store.lookup(family, key, dev, dt)
        if hit is None and rk in _tuned:
            hit = (dict(_tuned[rk]), "tuned")
        if hit is None and autotune_enabled():
            tuned = _autotune(family, fields, like, launch,
                              fam.default(fields, like.element_size()))
            if tuned is not None:
                _tuned[rk] = tuned
                hit = (dict(tuned), "tuned")
        if hit is not None:
            chosen, source = hit
        else:
            _runtime.warn_once(("default",), (
                f"triton_dsd: no tuned {family} config for {dev} / {dt}; using the built-in "
                f"default configs for it and any other untuned kernel (shown once; "
                f"`triton-dsd tune` measures and stores tuned ones)"))
            log.debug("default %s config for %s on %s/%s", family, key, dev, dt)
    if source != "default":
        why = config_problem(family, chosen)
        if why is not None:
            _rejected[rk] = True
            _reject(family, key, chosen, why)
            source = "default"
    if source == "default":  # computed only when used: most launches find a stored config
        return _launch(launch, fam.default(fields, like.element_size()), family, key, source)
    try:
        return _launch(launch, chosen, family, key, source)
    except Exception as e:  # noqa: BLE001 - only build errors fall back
        if not is_build_error(e):
            raise
        _rejected[rk] = True
        first = str(e).splitlines()[0][:200] if str(e) else ""
        _reject(family, key, chosen, f"{type(e).__name__}: {first}")
        return _launch(launch, fam.default(fields, like.element_size()), family, key, "default")


def _launch(launch: Callable[[dict], object], cfg: dict, family: str, key: str, source: str):
    """launch(cfg), noting the choice: in last_choice, and on each launch it records under
    capture (so ``chosen_config`` reports every launch's own key and source)."""
    last_choice[family] = (key, dict(cfg), source)
    captured = _runtime.captured()
    start = len(captured) if captured is not None else 0
    out = launch(cfg)
    if captured is not None:
        for rec in captured[start:]:
            rec.meta.setdefault("family", family)
            rec.meta.setdefault("key", key)
            rec.meta.setdefault("source", source)
    return out
