"""The offline compile report (sm_80 / sm_90, no GPU) and the CLI's main job."""
import json
import os
import subprocess
import sys

import pytest

ENV_NO_INTERP = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def report():
    out = subprocess.run([sys.executable, "-m", "triton_dsd.cli", "inspect", "--json"],
                         env=ENV_NO_INTERP, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(report):
    kernels = {"depthwise_fwd_kernel", "depthwise_bwd_input_kernel",
               "depthwise_bwd_weight_kernel", "splitk_reduce_kernel", "pointwise_fwd_kernel",
               "pointwise_bwd_weight_kernel", "dsd_fwd_kernel"}
    for arch in (80, 90):
        rows = [r for r in report if r["arch"] == arch]
        assert {r["kernel"] for r in rows} >= kernels
        for r in rows:
            assert r["error"] == "", r
            assert r["spill_bytes"] == 0, r
            assert r["regs"] > 0 and r["ok"], r


def test_channels_last_bf16_forward_uses_16_byte_loads(report):
    rows = [r for r in report if r["kernel"] == "depthwise_fwd_kernel"
            and r["case"].startswith("fwd bf16 NHWC k3")]
    assert len(rows) == 2
    for r in rows:
        assert r["ldg128"] > 0, r


def test_tensor_cores_in_pointwise_and_fused(report):
    """sm_90: HGMMA in every fp16/bf16 pointwise and fused kernel; sm_80: HMMA."""
    rows = [r for r in report if r["kernel"] in ("pointwise_fwd_kernel",
                                                 "pointwise_bwd_weight_kernel", "dsd_fwd_kernel")
            and ("bf16" in r["case"] or "fp16" in r["case"])]
    assert len(rows) >= 12
    for r in rows:
        if r["arch"] == 90:
            assert r["hgmma"] > 0, r
        else:
            assert r["hmma"] > 0, r


def test_demo_runs_the_article_example():
    out = subprocess.run([sys.executable, "-m", "triton_dsd.cli", "demo"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "output (1, 64, 6, 6)" in out.stdout
    assert "output (1, 64, 10, 10)" in out.stdout
    assert "MISMATCH" not in out.stdout
