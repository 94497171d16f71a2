"""The config store, lookup, the sweep and the tune CLI (CPU: interpreter, wall-clock timer)."""
import json
import multiprocessing
import os
import warnings

import pytest
import torch
import triton

import triton_dsd
from triton_dsd import _runtime, configs, dispatch, keys, problems, registry, store, tuning
from triton_dsd.testing import assert_close
from helpers import DEVICE, ENV_NO_INTERP, run_cli, run_fresh

PROB = problems.Problem(N=1, C=4, M=8, H=5, W=6, K=3, dilation=2, dtype=torch.float32,
                        layout="cl", device=torch.device(DEVICE))


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """An empty config folder searched first, and a user cache folder of our own."""
    monkeypatch.setenv("TRITON_DSD_CONFIG_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TRITON_DSD_AUTOTUNE", raising=False)
    dispatch.reset()
    yield tmp_path / "store"
    dispatch.reset()


def _dsd_call():
    t = PROB.tensors()
    x = t["x"]
    return (triton_dsd.dsd_conv2d, x, t["dw"], t["db"], t["pw"], t["pb"], 1, "same", 2)


def _write(store_dir, family, data):
    path = store.file_path(str(store_dir), family, store.device_name(PROB.device), "float32")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return path


def _valid_file(configs):
    return dict(schema=1, kernel="dsd_fwd", device_name=store.device_name(PROB.device),
                dtype="float32", triton_version=triton.__version__, configs=configs)


def _dsd_key():
    return next(keys.make_key(f) for fam, f, _, _ in problems.tunables(PROB) if fam == "dsd_fwd")


def test_sweep_then_the_layer_uses_what_it_wrote(store_dir):
    stats = tuning.sweep([PROB], str(store_dir), max_candidates=3, progress=False)
    assert stats == dict(tuned=6, stored=0, shared=0, failed=0)
    for fam in tuning.FAMILIES:
        path = store.file_path(str(store_dir), fam, store.device_name(PROB.device), "float32")
        data = json.load(open(path))
        assert store.validate(data, fam) is None and data["triton_version"] == triton.__version__
    dispatch.reset()
    fn, *args = _dsd_call()
    chosen = tuning.chosen_config(fn, *args)
    assert [c["kernel"] for c in chosen] == ["dsd_fwd_kernel"]
    stored = json.load(open(store.file_path(str(store_dir), "dsd_fwd", store.device_name(PROB.device),
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
    assert tuning.sweep([PROB], str(store_dir), max_candidates=3, progress=False)["stored"] == 6


def test_nearest_and_default(store_dir):
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="no tuned"):
        assert tuning.chosen_config(fn, *args)[0]["source"] == "default"
    other = _dsd_key().replace("C=4", "C=8")
    _write(store_dir, "dsd_fwd", _valid_file({other: dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16,
                                                       num_warps=4, num_stages=1)}))
    dispatch.reset()
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
def test_bad_files_warn_once_and_use_defaults(store_dir, content, why):
    good = _valid_file({_dsd_key(): dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16, num_warps=4)})
    if content == "OTHER_MAJOR":
        content = json.dumps(dict(good, triton_version="99.0.0"))
    elif content == "BAD_ENTRY":
        content = json.dumps(dict(good, configs={_dsd_key(): dict(BLOCK_P=32, BLOCK_Q=1)}))
    elif content == "TRUNCATED":
        content = json.dumps(good)[:40]
    _write(store_dir, "dsd_fwd", content)
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning) as rec:
        c = tuning.chosen_config(fn, *args)[0]
        fn(*args)  # a second call: no second warning about the file
    file_warnings = [w for w in rec if "ignoring config file" in str(w.message)]
    assert len(file_warnings) == 1 and why in str(file_warnings[0].message)
    assert c["source"] == "default"


def test_config_that_fails_to_compile_falls_back(store_dir):
    """BLOCK_P=48 is not a power of two (tl.arange refuses it): one warning, the default, the
    right answer, and no second warning."""
    _write(store_dir, "dsd_fwd", _valid_file({_dsd_key(): dict(BLOCK_P=48, BLOCK_M=16, BLOCK_K=16,
                                                            num_warps=4)}))
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="does not build"):
        y = fn(*args)
    assert dispatch.last_choice["dsd_fwd"][2] == "default"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = fn(*args)  # now memoised as default: no warning, same numbers
    assert torch.equal(y, ref)


def test_dispatch_does_not_hide_a_bug_behind_a_stored_config(store_dir, monkeypatch):
    """A ValueError or AssertionError from a launch is a bug, not "this config does not
    build": it reaches the caller instead of a silent fallback to the default."""
    _write(store_dir, "dsd_fwd", _valid_file({_dsd_key(): dict(BLOCK_P=32, BLOCK_M=16,
                                                            BLOCK_K=16, num_warps=4)}))
    real = _runtime.launch

    def buggy(kernel, grid, *args, **kwargs):
        if kernel.fn.__name__ == "dsd_fwd_kernel":
            raise AssertionError("a bug in the launcher")
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_runtime, "launch", buggy)
    fn, *args = _dsd_call()
    with pytest.raises(AssertionError, match="a bug in the launcher"):
        fn(*args)
    assert dispatch.last_choice["dsd_fwd"][2] == "exact"


def test_first_use_warns_once_at_the_callers_line(store_dir):
    """With nothing tuned, a whole layer (six kernel families) gives ONE warning, and it
    points at the line that called triton_dsd, not at the package."""
    layer = triton_dsd.DepthwiseSeparableDilatedConv2d(4, 8, 3, 2, "same").to(DEVICE)
    x = torch.randn(1, 4, 5, 6, device=DEVICE, requires_grad=True)
    with pytest.warns(RuntimeWarning) as rec:
        layer(x).sum().backward()  # the caller's line
        layer(x).sum().backward()
    ours = [w for w in rec if "triton_dsd" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert ours[0].filename == __file__, ours[0].filename


def _writer(args):
    root, worker = args
    for i in range(25):
        store.write_entries(root, "dsd_fwd", "gpu", "float32",
                             {f"w{worker}_{i}": dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16, num_warps=4)})


def test_concurrent_writers_lose_nothing(tmp_path):
    root = str(tmp_path)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_writer, [(root, 0), (root, 1)])
    data = json.load(open(store.file_path(root, "dsd_fwd", "gpu", "float32")))
    assert store.validate(data, "dsd_fwd") is None
    assert len(data["configs"]) == 50
    assert not [f for f in os.listdir(os.path.dirname(store.file_path(root, "dsd_fwd", "gpu", "x")))
                if f.startswith(".tmp_")]


def test_autotune_env_tunes_on_first_use_and_stores(store_dir, monkeypatch):
    monkeypatch.setenv("TRITON_DSD_AUTOTUNE", "1")
    fn, *args = _dsd_call()
    fn(*args)
    assert dispatch.last_choice["dsd_fwd"][2] == "tuned"
    path = store.file_path(str(store_dir), "dsd_fwd", store.device_name(PROB.device), "float32")
    assert _dsd_key() in json.load(open(path))["configs"]


def test_autotune_into_unwritable_folder_warns_and_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRITON_DSD_CONFIG_DIR", str(blocker / "store"))
    monkeypatch.setenv("TRITON_DSD_AUTOTUNE", "1")
    dispatch.reset()
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="cannot write"):
        fn(*args)
    assert dispatch.last_choice["dsd_fwd"][2] == "tuned"
    dispatch.reset()


def test_forward_never_benchmarks_unless_asked(store_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "pick_best", lambda *a, **k: calls.append(1))
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="no tuned"):
        fn(*args)
    assert calls == []


@pytest.mark.parametrize("family", tuning.FAMILIES)
def test_config_spaces_are_pruned(family):
    big = problems.Problem(N=8, C=256, M=256, H=56, W=56, K=7, dilation=4, dtype=torch.bfloat16)
    fields = next(f for fam, f, _, _ in problems.tunables(big) if fam == family)
    space = registry.family(family).space(fields, 2)
    assert 4 <= len(space) <= 400
    oh, ow = (int(v) for v in fields["HW"].split("x")) if "HW" in fields else (0, 0)
    for c in space:
        if family in ("depthwise_fwd", "depthwise_bwd_input"):  # register windows
            assert c["BLOCK_W"] <= max(2, ow) and c["BLOCK_C"] <= fields["C"]
            assert c["BLOCK_W"] * c["BLOCK_R"] * c["BLOCK_C"] <= 128 * 32 * c["num_warps"]
        elif family == "depthwise_bwd_weight":
            assert c["BLOCK_W"] <= ow and c["BLOCK_C"] <= fields["C"]
        else:
            stages = c["num_stages"]
            assert stages * (c["BLOCK_P"] + c["BLOCK_M"]) * c["BLOCK_K"] * 2 <= 2 * configs.SMEM_LIMIT


def test_tune_cli_end_to_end_and_resume(tmp_path, capsys, fresh_dispatch):
    code, out, err = run_cli(capsys, "tune", "--interpret", "--preset", "ci", "--out", str(tmp_path))
    assert code == 0, out + err
    # 4 problems x 6 kernels; the pointwise keys do not depend on the dilation: 4 are shared
    assert "tuned 20, already stored 0, failed 0" in out and "4 more shared a key" in out, out
    assert "ETA" in err  # the progress bar
    code, out, _ = run_cli(capsys, "tune", "--interpret", "--preset", "ci", "--out", str(tmp_path))
    assert code == 0 and "tuned 0, already stored 20, failed 0" in out, out
    left = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
            if not f.endswith(".json")]
    assert left == [], left  # no lock or temporary files left behind
    # the offline report compiles every stored config too (a GPU compile: not interpreted)
    env = dict(ENV_NO_INTERP, TRITON_DSD_CONFIG_DIR=str(tmp_path),
               XDG_CACHE_HOME=str(tmp_path / "empty_cache"))
    rep = run_fresh("-m", "triton_dsd.cli", "inspect", "--arch", "90", "--json",
                    "--stored-only", env=env, timeout=900)
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = json.loads(rep.stdout)
    assert len(rows) >= 20 and all(r["case"].startswith("stored") and r["ok"] for r in rows)


def test_tune_writes_to_the_user_cache_by_default(tmp_path, monkeypatch, capsys, fresh_dispatch):
    monkeypatch.delenv("TRITON_DSD_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shipped = set(os.listdir(store.shipped_dir()))
    code, out, err = run_cli(capsys, "tune", "--interpret", "--preset", "ci", "--dim", "2", "--K",
                           "1", "--dilation", "1")
    assert code == 0, out + err
    assert str(tmp_path / "cache" / "triton_dsd" / "autotune_configs") in out
    assert os.listdir(tmp_path / "cache" / "triton_dsd" / "autotune_configs")
    assert set(os.listdir(store.shipped_dir())) == shipped  # the package folder is untouched


def test_outputs_follow_the_umask(tmp_path):
    """Store files (like the CSVs and figures, all written by _io.atomic_write) get the
    permissions the umask gives any new file, not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        path = store.write_entries(str(tmp_path), "dsd_fwd", "gpu", "float32",
                                   {"k": dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16, num_warps=4)})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


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
def test_tune_bad_flags_are_usage_errors(argv, words, capsys):
    code, out, err = run_cli(capsys, "tune", "--interpret", *argv)
    assert code == 2, out + err
    assert "usage:" in err and words in err, err


def test_a_stored_config_that_does_not_fit_falls_back_at_launch(store_dir, monkeypatch):
    """The runtime half of the fallback: a stored config that passes the static check but
    fails at launch with a resource error gives one warning, then the default runs."""
    from triton.runtime.errors import OutOfResources
    _write(store_dir, "dsd_fwd", _valid_file({_dsd_key(): dict(BLOCK_P=32, BLOCK_M=16,
                                                            BLOCK_K=16, num_warps=4)}))
    real = _runtime.launch

    def too_big(kernel, grid, *args, **kwargs):
        if kernel.fn.__name__ == "dsd_fwd_kernel" and kwargs.get("BLOCK_P") == 32:
            raise OutOfResources(300000, 232448, "shared memory")
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_runtime, "launch", too_big)
    fn, *args = _dsd_call()
    with pytest.warns(RuntimeWarning, match="does not build.*OutOfResources"):
        y = fn(*args)
    assert dispatch.last_choice["dsd_fwd"][2] == "default" and not torch.isnan(y).any()


def test_build_errors_are_recognised_and_nothing_else():
    from triton.compiler.errors import CompilationError
    assert dispatch.is_build_error(RuntimeError("PassManager::run failed"))
    assert dispatch.is_build_error(CompilationError("src", None, "bad"))
    for e in (RuntimeError("CUDA error: an illegal memory access"), ValueError("x"),
              AssertionError("y"), IndexError("z")):
        assert not dispatch.is_build_error(e), e


def test_store_files_are_per_triton_major_and_validated(tmp_path):
    path = store.write_entries(str(tmp_path), "depthwise_fwd", "gpu", "bfloat16",
                               {"k": dict(BLOCK_R=16, BLOCK_W=8, BLOCK_C=64, num_warps=4)})
    assert path.endswith(f",triton={triton.__version__.split('.')[0]}.json")
    data = json.load(open(path))
    assert store.validate(data, "depthwise_fwd") is None
    data["configs"]["k"]["num_stages"] = 2  # the depthwise kernels do not pipeline
    assert "unknown keys ['num_stages']" in store.validate(data, "depthwise_fwd")
