"""Cost model against hand-computed values; the bench -> CSV -> plots pipeline end to end."""
import csv
import os
import subprocess
import sys

import pytest

from triton_dsd import bench, cost, plots
from helpers import DEVICE, run_cli, run_fresh


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




def test_cost_cli(capsys):
    code, out, err = run_cli(capsys, "cost", "--N", "1", "--C", "3", "--M", "2", "--H", "5",
                           "--W", "5", "--K", "3", "--dilation", "2", "--dtype", "float32")
    assert code == 0, err
    assert "depthwise           30" in out and "roofline floor on H200" in out
    code, out, _ = run_cli(capsys, "cost", "--bandwidth", "1000", "--flops", "100")
    assert code == 0 and "custom" in out and "1.00 TB/s" in out


@pytest.mark.parametrize("argv,words", [
    (["--device", "K80"], "no datasheet peaks"),
    (["--bandwidth", "-5", "--flops", "100"], "positive number"),
    (["--bandwidth", "0", "--flops", "100"], "positive number"),
    (["--bandwidth", "1000"], "give both"),
    (["--flops", "nan", "--bandwidth", "1"], "positive number"),
    (["--padding", "foo"], "'same', 'valid' or an integer"),
    (["--padding", "-1"], "'same', 'valid' or an integer"),
    (["--H", "4", "--W", "4", "--K", "3", "--dilation", "3", "--padding", "valid"],
     "the output would be empty"),
], ids=["unknown-device", "negative-bandwidth", "zero-bandwidth", "half-custom", "nan-flops",
        "padding-foo", "padding-negative", "input-smaller-than-kernel"])
def test_cost_cli_refuses_bad_values_in_one_line(argv, words, capsys):
    code, out, err = run_cli(capsys, "cost", *argv)
    assert code == 2, out + err
    assert words in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_bench_without_gpu_says_so_and_exits_0():
    out = run_fresh("-m", "triton_dsd.cli", "bench", timeout=300)
    if "no CUDA GPU" not in out.stdout:
        pytest.skip("a GPU is present")
    assert out.returncode == 0


def test_bench_interpret_pipeline_csv_and_figures(tmp_path, capsys):
    code, out, err = run_cli(capsys, "bench", "--interpret", "--preset", "ci", "--out-dir",
                           str(tmp_path), "--op", "dsd,depthwise", "--mode", "fwd,fwd+bwd",
                           "--provider", "triton_fused,triton_unfused,eager,eager_native")
    assert code == 0, out[-2000:] + err[-2000:]
    rows = bench.read_csv(str(tmp_path / "bench.csv"))
    provs = {r["provider"] for r in rows}
    expected = {"triton_fused", "triton_unfused", "eager"} | (
        {"eager_native"} if DEVICE == "cuda" else set())  # cuDNN on/off means nothing on a CPU
    assert provs == expected
    assert all(float(r["ms_p50"]) > 0 for r in rows)
    assert {r["dim"] for r in rows} == {"1", "2"}
    assert "vs eager" in out  # the printed summary
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    gpu = plots._slug(rows[0]["gpu_name"])
    for dim in (1, 2):  # the 1D half of the preset gets its own figures
        assert f"{gpu}_dsd_fwd_{dim}d_float32_cl_vs_dilation.png" in pngs, pngs
    # appending the same sweep again replaces rows, never duplicates them
    code, _, _ = run_cli(capsys, "bench", "--interpret", "--preset", "ci", "--out-dir",
                       str(tmp_path), "--op", "dsd", "--mode", "fwd", "--provider", "eager",
                       "--no-plot")
    assert code == 0
    assert len(bench.read_csv(str(tmp_path / "bench.csv"))) == len(rows)


def test_bench_rows_of_two_depth_multipliers_are_both_kept(tmp_path, capsys):
    code, out, err = run_cli(capsys, "bench", "--interpret", "--preset", "ci", "--dim", "2",
                           "--dilation", "1", "--m", "1,2", "--op", "dsd", "--provider", "eager",
                           "--csv", str(tmp_path / "b.csv"), "--no-plot")
    assert code == 0, err
    rows = bench.read_csv(str(tmp_path / "b.csv"))
    assert sorted(r["m"] for r in rows) == ["1", "2"]
    assert "wrote 2 rows (2 in the file)" in out


def test_cpu_bench_has_no_cudnn_providers(tmp_path, capsys):
    if DEVICE == "cuda":
        pytest.skip("on a GPU cuDNN on/off are real providers")
    code, out, _ = run_cli(capsys, "bench", "--interpret", "--preset", "ci", "--dim", "1",
                         "--dilation", "1", "--op", "depthwise", "--csv",
                         str(tmp_path / "b.csv"), "--no-plot")
    assert code == 0
    assert "eager_cudnn, eager_native measure cuDNN on/off" in out
    provs = {r["provider"] for r in bench.read_csv(str(tmp_path / "b.csv"))}
    assert not provs & {"eager_cudnn", "eager_native"}, provs


@pytest.mark.parametrize("argv,words", [
    (["bench", "--interpret", "--provider", "magic"], "unknown value"),
    (["bench", "--interpret", "--preset", "enormous"], "invalid choice"),
    (["bench", "--interpret", "--mode", "sideways"], "unknown value"),
    (["bench", "--interpret", "--bogus"], "unrecognized arguments"),
    (["plot"], "give --csv"),
    (["plot", "--csv", "/nonexistent.csv"], "no such CSV"),
    (["inspect", "--arch", "75"], "unsupported arch"),
])
def test_bench_and_plot_usage_errors(argv, words, capsys):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and words in err, err[-1500:]


def test_plot_into_an_unwritable_folder_is_one_line(tmp_path, capsys):
    rows = [dict({c: "" for c in bench.COLUMNS}, op="dsd", mode="fwd", provider=p, dtype="float32",
                 layout="cl", dim=2, N=1, C=4, m=1, M=8, H=5, W=6, K=k, dilation=1, stride=1,
                 ms_p50=1.0, ms_p20=1.0, ms_p80=1.0, gb_s=1.0, tflop_s=1.0, gpu_name="x")
            for p in ("eager", "triton_fused") for k in (1, 3)]
    bench.append_csv(str(tmp_path / "b.csv"), rows)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "plot", "--csv", str(tmp_path / "b.csv"), "--out",
                         str(blocker / "plots"))
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "triton-dsd plot: error" in err


def test_csv_from_another_schema_is_refused(tmp_path, capsys):
    path = tmp_path / "other.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "time"])
        w.writerow(["x", "1"])
    code, _, err = run_cli(capsys, "plot", "--csv", str(path), "--out", str(tmp_path))
    assert code == 2 and "missing columns" in err
    before = path.read_text()
    code, _, err = run_cli(capsys, "bench", "--interpret", "--preset", "ci", "--csv", str(path))
    assert code == 2 and "not a triton_dsd benchmark CSV" in err
    assert path.read_text() == before  # nothing half-written


def test_cost_model_figure(tmp_path):
    path = plots.cost_model_figure(str(tmp_path))
    assert os.path.basename(path).startswith("cost_model") and os.path.getsize(path) > 10_000


def test_csv_and_figures_follow_the_umask(tmp_path):
    """Outputs get the permissions any new file gets (0666 & ~umask), not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        png = plots.cost_model_figure(str(tmp_path))
        csv_path = str(tmp_path / "b.csv")
        bench.append_csv(csv_path, [])
    finally:
        os.umask(old)
    for path in (png, csv_path):
        assert os.stat(path).st_mode & 0o777 == 0o644, path


@pytest.mark.skipif(DEVICE == "cuda", reason="the dry run is the CPU stand-in for the GPU run")
def test_gpu_script_dry_run(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # PY: this interpreter (a fresh checkout's `python3` need not be the venv's)
    out = subprocess.run(["bash", os.path.join(root, "scripts", "gpu_check.sh"), "--dry-run",
                          str(tmp_path)], capture_output=True, text=True, timeout=1200, cwd=root,
                         env=dict(os.environ, PY=sys.executable))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("install", "pytest", "tune", "bench", "bench_step", "plot", "checks"):
        assert f"{step} rc=0" in summary, summary
    assert "check ok: True" in summary and "vs eager" in summary
    assert (tmp_path / "results.tar.gz").exists()


def test_a_csv_with_a_malformed_row_is_one_line_usage_error(tmp_path, capsys):
    rows = [dict({c: "" for c in bench.COLUMNS}, op="dsd", mode="fwd", provider="eager",
                 dtype="float32", layout="cl", dim=2, N=1, C=4, m=1, M=8, H=5, W=6, K=3,
                 dilation=1, stride=1, ms_p50=1.0, ms_p20=1.0, ms_p80=1.0, gb_s=1.0,
                 tflop_s=1.0, gpu_name="x")]
    bench.append_csv(str(tmp_path / "b.csv"), rows)
    text = (tmp_path / "b.csv").read_text().replace(",4,1,8,", ",four,1,8,")
    (tmp_path / "b.csv").write_text(text)
    code, _, err = run_cli(capsys, "plot", "--csv", str(tmp_path / "b.csv"), "--out", str(tmp_path))
    assert code == 2 and "column C is 'four'" in err and "Traceback" not in err, err
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_cli(capsys, "plot", "--csv", str(tmp_path / "bin.csv"))
    assert code == 2 and "not UTF-8" in err, err


def test_a_failing_triton_provider_fails_the_bench(tmp_path, capsys, monkeypatch):
    real = bench.make_case

    def broken(op, provider, mode, p):
        if provider == "triton_fused":
            raise RuntimeError("a kernel bug")
        return real(op, provider, mode, p)

    monkeypatch.setattr(bench, "make_case", broken)
    code, out, err = run_cli(capsys, "bench", "--interpret", "--preset", "ci", "--dim", "2",
                             "--dilation", "1", "--provider", "triton_fused,eager", "--csv",
                             str(tmp_path / "b.csv"), "--no-plot")
    assert code == 1 and "FAILED dsd fwd triton_fused" in out and "a kernel bug" in err
