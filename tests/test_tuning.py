"""The config store, lookup, the sweep and the tune CLI (CPU: interpreter, wall-clock timer)."""
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
import triton

import triton_dsd
from triton_dsd import problems, tuning
from triton_dsd.testing import assert_close
from conftest import DEVICE

PROB = problems.Problem(N=1, C=4, M=8, H=5, W=6, K=3, dilation=2, dtype=torch.float32,
                        layout="cl", device=torch.device(DEVICE))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty config folder searched first, and a user cache folder of our own."""
    monkeypatch.setenv("TRITON_DSD_CONFIG_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TRITON_DSD_AUTOTUNE", raising=False)
    tuning.reset()
    yield tmp_path / "store"
    tuning.reset()


def _dsd_call():
    t = PROB.tensors()
    x = t["x"]
    return (triton_dsd.dsd_conv2d, x, t["dw"], t["db"], t["pw"], t["pb"], 1, "same", 2)


def _write(store, family, data):
    path = tuning.file_path(str(store), family, tuning.device_name(PROB.device), "float32")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return path


def _valid_file(configs):
    return dict(schema=1, kernel="dsd_fwd", device_name=tuning.device_name(PROB.device),
                dtype="float32", triton_version=triton.__version__, configs=configs)


def _dsd_key():
    return next(tuning.make_key(f) for fam, f, _, _ in problems.tunables(PROB) if fam == "dsd_fwd")


def test_sweep_then_the_layer_uses_what_it_wrote(store):
    stats = tuning.sweep([PROB], str(store), max_candidates=3, progress=False)
    assert stats == dict(tuned=6, skipped=0, failed=0)
    for fam in tuning.FAMILIES:
        path = tuning.file_path(str(store), fam, tuning.device_name(PROB.device), "float32")
        data = json.load(open(path))
        assert tuning.validate(data, fam) is None and data["triton_version"] == triton.__version__
    tuning.reset()
    fn, *args = _dsd_call()
    chosen = tuning.chosen_config(fn, *args)
    assert [c["kernel"] for c in chosen] == ["dsd_fwd_kernel"]
    stored = json.load(open(tuning.file_path(str(store), "dsd_fwd", tuning.device_name(PROB.device),
                                             "float32")))["configs"][chosen[0]["key"]]
    assert chosen[0]["source"] == "exact"
    assert chosen[0]["config"] == {k: v for k, v in stored.items() if k != "ms"}
    # and a real forward with it is right
    y = fn(*args)
    ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(
        args[0].double(), args[1].double(), args[2].double(), 1, "same", 2, groups=4),
        args[3].double(), args[4].double())
    assert_close(y, ref, torch.float32, 36)
    # resume: nothing is measured twice
    assert tuning.sweep([PROB], str(store), max_candidates=3, progress=False)["skipped"] == 6


def test_nearest_and_default(store):
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="default heuristic"):
        assert tuning.chosen_config(fn, *args)[0]["source"] == "default"
    other = _dsd_key().replace("C=4", "C=8")
    _write(store, "dsd_fwd", _valid_file({other: dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16,
                                                       num_warps=4, num_stages=1)}))
    tuning.reset()
    c = tuning.chosen_config(fn, *args)[0]
    assert c["source"] == "nearest" and c["config"]["BLOCK_P"] == 32


@pytest.mark.parametrize("content,why", [
    ("{not json", "unreadable"),
    ('{"schema": 1, "kernel": "dsd_fwd", "device_name": "x", "dtype": "float32", "triton_version": "3.0", "configs": {}, "extra": 1}', "unknown keys"),
    ('{"schema": 1, "kernel": "dsd_fwd", "dtype": "float32", "triton_version": "3.0", "configs": {}}', "missing keys"),
    ("OTHER_MAJOR", "another major version"),
    ("BAD_ENTRY", "unknown keys"),
    ("TRUNCATED", "unreadable"),
], ids=["not-json", "unknown-key", "missing-key", "other-triton-major", "bad-entry", "truncated"])
def test_bad_files_warn_once_and_use_defaults(store, content, why):
    good = _valid_file({_dsd_key(): dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16, num_warps=4)})
    if content == "OTHER_MAJOR":
        content = json.dumps(dict(good, triton_version="99.0.0"))
    elif content == "BAD_ENTRY":
        content = json.dumps(dict(good, configs={_dsd_key(): dict(BLOCK_P=32, BLOCK_Q=1)}))
    elif content == "TRUNCATED":
        content = json.dumps(good)[:40]
    _write(store, "dsd_fwd", content)
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning) as rec:
        c = tuning.chosen_config(fn, *args)[0]
        fn(*args)  # a second call: no second warning about the file
    file_warnings = [w for w in rec if "ignoring config file" in str(w.message)]
    assert len(file_warnings) == 1 and why in str(file_warnings[0].message)
    assert c["source"] == "default"


def test_config_that_fails_to_compile_falls_back(store):
    """BLOCK_P=48 is not a power of two: tl.arange refuses it; one warning, default, right answer."""
    _write(store, "dsd_fwd", _valid_file({_dsd_key(): dict(BLOCK_P=48, BLOCK_M=16, BLOCK_K=16,
                                                            num_warps=4)}))
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="failed"):
        y = fn(*args)
    assert tuning.last_choice["dsd_fwd"][2] == "default"
    ref = fn(*args)  # now memoised as default, no warning, same numbers
    assert torch.equal(y, ref)


def _writer(args):
    root, worker = args
    for i in range(25):
        tuning.write_entries(root, "dsd_fwd", "gpu", "float32",
                             {f"w{worker}_{i}": dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16, num_warps=4)})


def test_concurrent_writers_lose_nothing(tmp_path):
    root = str(tmp_path)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_writer, [(root, 0), (root, 1)])
    data = json.load(open(tuning.file_path(root, "dsd_fwd", "gpu", "float32")))
    assert tuning.validate(data, "dsd_fwd") is None
    assert len(data["configs"]) == 50
    assert not [f for f in os.listdir(os.path.dirname(tuning.file_path(root, "dsd_fwd", "gpu", "x")))
                if f.startswith(".tmp_")]


def test_autotune_env_tunes_on_first_use_and_stores(store, monkeypatch):
    monkeypatch.setenv("TRITON_DSD_AUTOTUNE", "1")
    fn, *args = _dsd_call()
    fn(*args)
    assert tuning.last_choice["dsd_fwd"][2] == "tuned"
    path = tuning.file_path(str(store), "dsd_fwd", tuning.device_name(PROB.device), "float32")
    assert _dsd_key() in json.load(open(path))["configs"]


def test_autotune_into_unwritable_folder_warns_and_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRITON_DSD_CONFIG_DIR", str(blocker / "store"))
    monkeypatch.setenv("TRITON_DSD_AUTOTUNE", "1")
    tuning.reset()
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="cannot write"):
        fn(*args)
    assert tuning.last_choice["dsd_fwd"][2] == "tuned"
    tuning.reset()


def test_forward_never_benchmarks_unless_asked(store, monkeypatch):
    calls = []
    monkeypatch.setattr(tuning, "pick_best", lambda *a, **k: calls.append(1))
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="default heuristic"):
        fn(*args)
    assert calls == []


@pytest.mark.parametrize("family", tuning.FAMILIES)
def test_config_spaces_are_pruned(family):
    big = problems.Problem(N=8, C=256, M=256, H=56, W=56, K=7, dilation=4, dtype=torch.bfloat16)
    fields = next(f for fam, f, _, _ in problems.tunables(big) if fam == family)
    space = tuning.config_space(family, fields, 2)
    assert 4 <= len(space) <= 400
    for c in space:
        if family.startswith("depthwise"):
            oh, ow = (int(v) for v in fields["HW"].split("x"))
            assert c["BLOCK_W"] <= ow and c["BLOCK_H"] <= oh and c["BLOCK_C"] <= fields["C"]
        else:
            stages = c["num_stages"]
            assert stages * (c["BLOCK_P"] + c["BLOCK_M"]) * c["BLOCK_K"] * 2 <= 2 * tuning.SMEM_LIMIT
    # halo-aware: a large dilation allows no larger spatial tiles than a small one
    if family.startswith("depthwise"):
        small = dict(fields, d="1x1")
        area = lambda sp: max(c["BLOCK_H"] * c["BLOCK_W"] for c in sp)  # noqa: E731
        assert area(tuning.config_space(family, dict(fields, d="16x16"), 2)) <= area(
            tuning.config_space(family, small, 2))


#: subprocesses interpret only where the tests do (on a GPU they run natively)
INTERP = {"TRITON_INTERPRET": "1"} if DEVICE == "cpu" else {}


def _cli(*argv, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "triton_dsd.cli", *argv], capture_output=True,
                          text=True, env=e, timeout=900)


def test_tune_cli_end_to_end_and_resume(tmp_path):
    out = _cli("tune", "--preset", "ci", "--out", str(tmp_path), env=INTERP)
    assert out.returncode == 0, out.stdout + out.stderr
    # 4 problems x 6 kernels; the pointwise keys do not depend on the dilation, so 4 repeat
    assert "tuned 20, already stored 4, failed 0" in out.stdout
    assert "ETA" in out.stderr  # the progress bar
    again = _cli("tune", "--preset", "ci", "--out", str(tmp_path), env=INTERP)
    assert "tuned 0, already stored 24, failed 0" in again.stdout
    # the offline report compiles every stored config too
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DSD_CONFIG_DIR"] = str(tmp_path)
    rep = subprocess.run([sys.executable, "-m", "triton_dsd.cli", "inspect", "--arch", "90",
                          "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = json.loads(rep.stdout)
    stored = [r for r in rows if r["case"].startswith("stored")]
    assert len(stored) >= 20 and all(r["ok"] for r in stored)


@pytest.mark.parametrize("argv,words", [
    (["--K", "0"], "positive"),
    (["--K", "three"], "integers"),
    (["--dtype", "int8"], "unknown value"),
    (["--layout", "nhwc"], "unknown value"),
    (["--preset", "huge"], "invalid choice"),
    (["--N", "1,2"], "one positive integer"),
    (["--dim", "3"], "unknown value"),
    (["--max-candidates", "0"], "positive"),
])
def test_tune_bad_flags_are_usage_errors(argv, words):
    out = _cli("tune", "--interpret", *argv, env=INTERP)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "usage:" in out.stderr and words in out.stderr, out.stderr
