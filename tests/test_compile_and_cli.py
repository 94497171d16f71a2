"""The offline compile report (sm_80 / sm_90, no GPU) and the CLI's main job."""
import pytest

from triton_dsd import cli, registry


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(compile_report):
    """Every kernel of the registry builds for both archs; no row spills by any of the three
    measures (STACK bytes, LOCAL bytes, LDL/STL instructions)."""
    for arch in (80, 90):
        rows = [r for r in compile_report if r["arch"] == arch]
        assert {r["kernel"] for r in rows} >= set(registry.KERNEL_NAMES)
        for r in rows:
            assert r["error"] == "", r
            assert r["stack_bytes"] == r["local_bytes"] == r["ldl_stl"] == 0, r
            assert r["regs"] > 0 and r["ok"], r


def test_fp_fusion_is_on_in_every_kernel(compile_report):
    """FP fusion is set at launch (Triton 3.10 turns its default off): the depthwise sums are
    FFMAs, not FMUL + FADD pairs."""
    rows = [r for r in compile_report if r["kernel"] == "depthwise_fwd_kernel"]
    assert rows
    for r in rows:
        assert r["ffma"] > 0 and r["ffma"] >= 4 * r["fmul_fadd"], r


def test_channels_last_bf16_forward_uses_16_byte_loads(compile_report):
    rows = [r for r in compile_report if r["kernel"] == "depthwise_fwd_kernel"
            and r["case"] == "fwd bf16 NHWC k3 d2"]
    assert len(rows) == 2
    for r in rows:
        assert r["ldg128"] > 0, r


def test_tensor_cores_in_pointwise_and_fused(compile_report):
    """sm_90: HGMMA in every fp16/bf16 pointwise kernel; tensor cores (HGMMA, or HMMA for the
    fused kernel's register windows, whose per-column GEMMs have fewer than a warpgroup's 64
    rows) in every fused one; sm_80: HMMA."""
    rows = [r for r in compile_report if r["kernel"] in ("pointwise_fwd_kernel",
                                                         "pointwise_bwd_weight_kernel", "dsd_fwd_kernel")
            and ("bf16" in r["case"] or "fp16" in r["case"])]
    assert len(rows) >= 12
    for r in rows:
        if r["arch"] == 90 and r["kernel"] != "dsd_fwd_kernel":
            assert r["hgmma"] > 0, r
        elif r["arch"] == 90:
            assert r["hgmma"] + r["hmma"] > 0, r
        else:
            assert r["hmma"] > 0, r


def test_spill_detection_reads_stack_bytes_and_ldl_stl():
    """A row is ok only if STACK, LOCAL and LDL/STL are all zero (ptxas reports spill stores as
    STACK bytes; the first report read LOCAL only and called spilling kernels ok)."""
    from triton_dsd.compile_report import Row
    assert Row("k", "c", 90, regs=96).ok
    for field in ("stack_bytes", "local_bytes", "ldl_stl"):
        row = Row("k", "c", 90, regs=255, **{field: 8})
        assert row.spills and not row.ok, field


def test_demo_runs_the_article_example(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "output (1, 64, 6, 6)" in out
    assert "output (1, 64, 10, 10)" in out
    assert "MISMATCH" not in out


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "triton-dsd tune" in top
    with pytest.raises(SystemExit):
        cli.main(["cost", "--help"])
    cost_help = capsys.readouterr().out
    assert "memory bandwidth in GB/s" in cost_help and "(default: 128)" in cost_help


def test_every_launch_sets_fp_fusion_explicitly():
    """Every kernel is launched with enable_fp_fusion=True, whatever Triton's default (3.10
    turns it off): checked on what each launcher would launch."""
    import torch
    from triton_dsd import _runtime, problems
    prob = problems.Problem(N=1, C=4, M=8, H=5, W=6, K=3, dilation=2, dtype=torch.float32)
    from triton_dsd import launchers
    with _runtime.capture_launches() as calls:
        for _, _, default, run in problems.tunables(prob):
            run(default)
        # the decode step is not tuned: launched on its own
        launchers.dsd_step(torch.zeros(2, 4), torch.zeros(2, 4, 2), torch.zeros(4, 1, 1, 3),
                           None, torch.zeros(8, 4, 1, 1), None, 1, False)
    assert {c.kernel.fn.__name__ for c in calls} == set(registry.KERNEL_NAMES)
    assert all(c.kwargs["enable_fp_fusion"] is True for c in calls)


def test_spills_are_detected_in_a_real_cubin():
    """A config known to spill (a 7x7 NCHW fused tile of 128 pixels on 4 warps) is flagged by
    the STACK bytes and the LDL/STL count that cuobjdump reports."""
    import json
    from helpers import run_fresh
    code = (
        "import json, torch\n"
        "from triton_dsd import _runtime, compile_report as cr, launchers as L, shapes\n"
        "x = torch.empty(8, 128, 56, 56, dtype=torch.float16)\n"
        "w = torch.empty(128, 1, 7, 7, dtype=torch.float16)\n"
        "pw = torch.empty(64, 128, 1, 1, dtype=torch.float16)\n"
        "pads = shapes.resolve_padding('same', (7, 7), (1, 1), (1, 1))\n"
        "with _runtime.capture_launches() as calls:\n"
        "    L.dsd_fwd(x, w, None, pw, None, (1, 1), pads, (1, 1), False, cfg=dict(\n"
        "        BLOCK_P=128, BLOCK_M=64, BLOCK_K=16, num_warps=4, num_stages=2))\n"
        "c = calls[0]\n"
        "comp = cr._compile(c.kernel, c.args, c.kwargs, 90)\n"
        "open('/tmp/_spill.cubin', 'wb').write(comp.asm['cubin'])\n"
        "print(json.dumps(cr.analyse('/tmp/_spill.cubin')))\n")
    out = run_fresh("-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["stack_bytes"] > 0 and stats["ldl_stl"] > 0, stats
    from triton_dsd.compile_report import Row
    assert not Row("dsd_fwd_kernel", "spill", 90, **stats).ok


def test_a_malformed_stored_key_is_a_failing_row_not_a_traceback(tmp_path):
    """inspect compiles every stored config the lookup can read; one whose key describes no
    problem is reported as an error row (exit 1), not a crash."""
    import json
    import os
    import triton
    from triton_dsd import store
    from helpers import ENV_NO_INTERP, run_fresh
    path = store.file_path(str(tmp_path), "depthwise_fwd", "gpu", "bfloat16")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(dict(schema=1, kernel="depthwise_fwd", device_name="gpu", dtype="bfloat16",
                       triton_version=triton.__version__,
                       configs={"layout=cl,nonsense=1": dict(BLOCK_R=16, BLOCK_W=8, BLOCK_C=64,
                                                             num_warps=4)}), f)
    env = dict(ENV_NO_INTERP, TRITON_DSD_CONFIG_DIR=str(tmp_path),
               XDG_CACHE_HOME=str(tmp_path / "empty_cache"))
    out = run_fresh("-m", "triton_dsd.cli", "inspect", "--arch", "90", "--stored-only",
                    "--json", env=env, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert len(rows) == 1 and "does not describe a depthwise_fwd problem" in rows[0]["error"]
