"""The tuned-config store: folders, file format, validation, atomic writes and lookup.

Layout (vLLM-style; one file per Triton major version, so folders shared by machines with
different Tritons never overwrite each other's configs)::

    <root>/<family>/device_name=<GPU>,dtype=<dtype>,triton=<major>.json
    {"schema": 1, "kernel": ..., "device_name": ..., "dtype": ..., "triton_version": "3.6.0",
     "configs": {"<problem key>": {"BLOCK_...": .., "num_warps": .., ["num_stages": ..,] "ms": ..}}}

Folders searched, first hit wins: ``$TRITON_DSD_CONFIG_DIR``, then the user cache
(``$XDG_CACHE_HOME/triton_dsd/autotune_configs``, default ``~/.cache/...``; where ``triton-dsd
tune`` and ``TRITON_DSD_AUTOTUNE=1`` write by default), then the configs shipped in the package.
:func:`lookup` gives the exact key, else the nearest key of the same layout, else None. A file
that is not JSON, has unknown or missing keys, or was tuned by another Triton major version is
skipped with one warning. Nothing here ever raises into a forward pass.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Tuple

import torch
import triton

from triton_dsd import _io, _runtime, autotune_configs, keys, registry

SCHEMA = 1
_TOP_KEYS = {"schema", "kernel", "device_name", "dtype", "triton_version", "configs"}
#: entry fields that describe a measurement, not a launch option
ENTRY_META = {"ms", "tuned_at"}

_memo: Dict[tuple, Optional[Tuple[dict, str]]] = {}
_tables: Dict[str, Tuple[float, Optional[dict]]] = {}


def reset() -> None:
    """Forget loaded files and memoised lookups (tests; after a sweep)."""
    _memo.clear()
    _tables.clear()


# ----------------------------------------------------------------------------- where
def shipped_dir() -> str:
    return os.path.dirname(os.path.abspath(autotune_configs.__file__))


def user_dir() -> str:
    """$XDG_CACHE_HOME/triton_dsd/autotune_configs (an unset or empty XDG_CACHE_HOME means
    ~/.cache, as the XDG spec says)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "triton_dsd", "autotune_configs")


def write_dir() -> str:
    """Where new tuned configs go by default: $TRITON_DSD_CONFIG_DIR, else the user cache
    (never the installed package)."""
    return os.environ.get("TRITON_DSD_CONFIG_DIR") or user_dir()


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
    """The store file of one kernel family, device and dtype, for this Triton's major version."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    major = _triton_major(triton.__version__)
    return os.path.join(root, family, f"device_name={safe},dtype={dtype},triton={major}.json")


# ----------------------------------------------------------------------------- format
def _triton_major(version: str) -> str:
    return str(version).split(".")[0]


def validate(data, family: str) -> Optional[str]:
    """None if ``data`` is a valid store file for ``family``, else what is wrong with it."""
    if not isinstance(data, dict):
        return "not a JSON object"
    found = set(data)
    if found != _TOP_KEYS:
        return (f"unknown keys {sorted(found - _TOP_KEYS)}" if found - _TOP_KEYS
                else f"missing keys {sorted(_TOP_KEYS - found)}")
    if data["schema"] != SCHEMA:
        return f"schema {data['schema']!r} (this package reads {SCHEMA})"
    if data["kernel"] != family:
        return f"kernel {data['kernel']!r} in a {family} file"
    if _triton_major(data["triton_version"]) != _triton_major(triton.__version__):
        return (f"tuned with Triton {data['triton_version']}, this is Triton "
                f"{triton.__version__} (another major version)")
    if not isinstance(data["configs"], dict):
        return "`configs` is not an object"
    fam = registry.family(family)
    need = set(fam.blocks) | {"num_warps"}
    allowed = need | ({"num_stages"} if fam.pipelined else set()) | ENTRY_META
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


def launch_options(entry: dict) -> dict:
    """A stored entry without its measurement fields."""
    return {k: v for k, v in entry.items() if k not in ENTRY_META}


def read(path: str, family: str) -> Optional[dict]:
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
        _runtime.warn_once(("file", path, mtime), f"triton_dsd: ignoring config file {path}: "
                           f"{problem}; using default configs instead")
    else:
        table = {k: launch_options(c) for k, c in data["configs"].items()}
    _tables[path] = (mtime, table)
    return table


def load_table(family: str, device: str, dtype: str) -> Dict[str, dict]:
    """All valid stored configs for one kernel/device/dtype; earlier folders win."""
    merged: Dict[str, dict] = {}
    for root in reversed(search_dirs()):
        table = read(file_path(root, family, device, dtype), family)
        if table:
            merged.update(table)
    return merged


def write_entries(root: str, family: str, device: str, dtype: str,
                  entries: Dict[str, dict]) -> str:
    """Merge ``entries`` into the store file: under a lock on its folder (concurrent writers
    merge, never clobber), read, merge, then an atomic replace."""
    path = file_path(root, family, device, dtype)
    with _io.locked_dir(os.path.dirname(path)):
        current: Dict[str, dict] = {}
        try:
            with open(path) as f:
                data = json.load(f)
            if validate(data, family) is None:
                current = data["configs"]
            else:
                _runtime.warn_once(("overwrite", path),
                                   f"triton_dsd: replacing invalid config file {path}")
        except (OSError, ValueError):
            pass
        current.update(entries)
        data = dict(schema=SCHEMA, kernel=family, device_name=device, dtype=dtype,
                    triton_version=triton.__version__,
                    configs={k: current[k] for k in sorted(current)})

        def dump(f):
            json.dump(data, f, indent=1)
            f.write("\n")
        _io.atomic_write(path, dump)
    _tables.pop(path, None)
    _memo.clear()
    return path


# ----------------------------------------------------------------------------- lookup
def lookup(family: str, key: str, dev: str, dt: str) -> Optional[Tuple[dict, str]]:
    """(config, 'exact' | 'nearest') for one problem key (``keys.make_key``) on device ``dev``
    (:func:`device_name`) and dtype ``dt`` (:func:`dtype_name`), or None when nothing stored
    fits."""
    memo_key = (family, key, dev, dt)
    try:
        hit = _memo[memo_key]
    except KeyError:
        table = load_table(family, dev, dt)
        hit = None
        if key in table:
            hit = (dict(table[key]), "exact")
        elif table:
            want = keys.parse_key(key)
            dist, near = min((keys.distance(want, keys.parse_key(k)), k) for k in table)
            if dist < math.inf:
                hit = (dict(table[near]), "nearest")
        _memo[memo_key] = hit  # another thread may clear the memo: `hit` stays ours
    return None if hit is None else (dict(hit[0]), hit[1])
