"""Cost model against hand-computed values; the bench -> CSV -> plots pipeline end to end."""
import csv
import os
import subprocess
import sys

import pytest

from triton_dsd import bench, cost, plots
from conftest import DEVICE


def test_cost_article_example_same_padding():
    """5x5x3 input, 3x3 kernel, dilation 2, 2 outputs (the article's worked example)."""
    c = cost.layer_cost(1, 3, 2, 5, 5, 3, 2, 1, "same", bias=True, dtype_bytes=4)
    assert c.out_hw == (5, 5)
    assert c.macs_depthwise == 25 * 3 * 9 == 675
    assert c.macs_pointwise == 25 * 3 * 2 == 150
    assert c.params_depthwise == 3 * 9 + 3 == 30
    assert c.params_pointwise == 3 * 2 + 2 == 8
    assert c.params_dense == 3 * 2 * 9 + 2 == 56
    assert c.macs_dense == 25 * 3 * 2 * 9
    assert c.flops == 2 * (675 + 150)
    x, z, y, w = 75 * 4, 75 * 4, 50 * 4, 38 * 4
    assert c.bytes_fused == x + w + y
    assert c.bytes_unfused == x + w + y + 2 * z


def test_cost_article_example_padding_zero_and_1d():
    c = cost.layer_cost(1, 3, 2, 5, 5, 3, 2, 1, 0)
    assert c.out_hw == (1, 1) and c.macs_depthwise == 27 and c.macs_pointwise == 6
    c = cost.layer_cost(1, 3, 64, 10, 10, 3, 2, 1, 0)  # the article's code example
    assert c.out_hw == (6, 6)
    c1 = cost.layer_cost(2, 8, 16, 1, 100, (1, 5), (1, 4), 1, "same")
    assert c1.out_hw == (1, 100) and c1.macs_depthwise == 2 * 100 * 8 * 5


def test_param_ratio_is_about_one_over_m_plus_one_over_k2():
    c = cost.layer_cost(1, 256, 256, 8, 8, 7, 1, 1, "same", bias=False)
    assert c.param_ratio_to_dense == pytest.approx(1 / 256 + 1 / 49)


def test_roofline_floor_by_hand():
    c = cost.layer_cost(8, 128, 128, 56, 56, 3, 1, 1, "same", bias=True, dtype_bytes=2)
    dev = cost.DEVICES["H200"]
    mem = c.bytes_fused / 4.8e12
    comp = 2 * c.macs_depthwise / 67e12 + 2 * c.macs_pointwise / 989e12
    assert cost.roofline_ms(c, "dsd", "fwd", dev) == pytest.approx(1e3 * max(mem, comp))
    assert cost.device_for("NVIDIA H200").name == "H200"
    with pytest.raises(KeyError):
        cost.device_for("Tesla K80")


#: subprocesses interpret only where the tests do (on a GPU they run natively)
INTERP = {"TRITON_INTERPRET": "1"} if DEVICE == "cpu" else {}


def _cli(*argv, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "triton_dsd.cli", *argv], capture_output=True,
                          text=True, env=e, timeout=900)


def test_cost_cli():
    out = _cli("cost", "--N", "1", "--C", "3", "--M", "2", "--H", "5", "--W", "5", "--K", "3",
               "--dilation", "2", "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    assert "depthwise           30" in out.stdout and "roofline floor on H200" in out.stdout
    out = _cli("cost", "--bandwidth", "1000", "--flops", "100")
    assert out.returncode == 0 and "custom" in out.stdout
    bad = _cli("cost", "--device", "K80")
    assert bad.returncode == 2 and "no datasheet peaks" in bad.stderr


def test_bench_without_gpu_says_so_and_exits_0():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "triton_dsd.cli", "bench"], capture_output=True,
                         text=True, env=env, timeout=300)
    if "no CUDA GPU" not in out.stdout:
        pytest.skip("a GPU is present")
    assert out.returncode == 0


def test_bench_interpret_pipeline_csv_and_figures(tmp_path):
    out = _cli("bench", "--interpret", "--preset", "ci", "--dim", "2", "--out-dir", str(tmp_path),
               "--op", "dsd,depthwise", "--mode", "fwd,fwd+bwd",
               "--provider", "triton_fused,triton_unfused,eager,eager_native", env=INTERP)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = bench.read_csv(str(tmp_path / "bench.csv"))
    provs = {r["provider"] for r in rows}
    assert provs == {"triton_fused", "triton_unfused", "eager", "eager_native"}
    assert all(float(r["ms_p50"]) > 0 for r in rows)
    assert "vs eager" in out.stdout  # the printed summary
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    gpu = plots._slug(rows[0]["gpu_name"])
    assert f"{gpu}_dsd_fwd_float32_cl_vs_dilation.png" in pngs, pngs
    # appending the same sweep again replaces rows, never duplicates them
    again = _cli("bench", "--interpret", "--preset", "ci", "--dim", "2", "--out-dir", str(tmp_path),
                 "--op", "dsd", "--mode", "fwd", "--provider", "eager", "--no-plot", env=INTERP)
    assert again.returncode == 0
    assert len(bench.read_csv(str(tmp_path / "bench.csv"))) == len(rows)


@pytest.mark.parametrize("argv,words", [
    (["bench", "--interpret", "--provider", "magic"], "unknown value"),
    (["bench", "--interpret", "--preset", "enormous"], "invalid choice"),
    (["bench", "--interpret", "--mode", "sideways"], "unknown value"),
    (["bench", "--interpret", "--bogus"], "unrecognized arguments"),
    (["plot"], "give --csv"),
    (["plot", "--csv", "/nonexistent.csv"], "no such CSV"),
])
def test_bench_and_plot_usage_errors(argv, words):
    out = _cli(*argv, env=INTERP)
    assert out.returncode == 2 and words in out.stderr, out.stderr[-1500:]


def test_csv_from_another_schema_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "time"])
        w.writerow(["x", "1"])
    out = _cli("plot", "--csv", str(path), "--out", str(tmp_path))
    assert out.returncode == 2 and "missing columns" in out.stderr
    before = path.read_text()
    out = _cli("bench", "--interpret", "--preset", "ci", "--csv", str(path), env=INTERP)
    assert out.returncode == 2 and "not a triton_dsd benchmark CSV" in out.stderr
    assert path.read_text() == before  # nothing half-written


def test_cost_model_figure(tmp_path):
    path = plots.cost_model_figure(str(tmp_path))
    assert os.path.basename(path).startswith("cost_model") and os.path.getsize(path) > 10_000


@pytest.mark.skipif(DEVICE == "cuda", reason="the dry run is the CPU stand-in for the GPU run")
def test_gpu_script_dry_run(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["bash", os.path.join(root, "scripts", "gpu_check.sh"), "--dry-run",
                          str(tmp_path)], capture_output=True, text=True, timeout=1200, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("install", "pytest", "tune", "bench", "plot", "checks"):
        assert f"{step} rc=0" in summary, summary
    assert "check ok: True" in summary and "vs eager" in summary
    assert (tmp_path / "results.tar.gz").exists()
