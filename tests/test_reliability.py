"""Reliability: NaN/Inf exactly as eager, degenerate shapes, tensors past 2^31 elements, and
property-based tests (hypothesis) over random valid configurations."""
import os

import pytest
import torch
from hypothesis import given, note, seed, settings, strategies as st

import triton_dsd
from triton_dsd import reliability
from triton_dsd.testing import assert_close, reference
from helpers import DEVICE, check_dsd, eager_dsd, ran

HYPOTHESIS_SEED = int(os.environ["TRITON_DSD_HYPOTHESIS_SEED"])  # set (and printed) by conftest


@pytest.mark.portable
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_nan_and_inf_propagate_as_in_eager(fused, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 5, 6] = float("inf")
    x[1, 2, 0, 0] = float("-inf")
    ps = [torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64),
          torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    ps[0][5, 0, 1, 1] = 0.0  # inf * 0 = nan, as in eager
    xt = x.float().to(DEVICE)
    xt = (xt.contiguous(memory_format=torch.channels_last) if layout == "cl" else xt).requires_grad_()
    pt = [p.float().to(DEVICE).requires_grad_() for p in ps]
    y = triton_dsd.dsd_conv2d(xt, *pt, 1, 1, 2, fused=fused)
    xr, pr = reference(xt), [reference(p) for p in pt]
    yr = eager_dsd(xr, *pr, 1, 1, 2, 2, torch.float32)
    # the case must hold both: NaN (a NaN input, inf * 0) and +-inf outputs
    assert torch.isnan(yr).any(), "no NaN in the reference: the case proves nothing"
    assert torch.isinf(yr).any(), "no inf in the reference: the case proves nothing"
    assert_close(y, yr, torch.float32, 54, "y")
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64)
    dy[0, 2, 1, 1] = float("nan")
    y.backward(dy.float().to(DEVICE))
    yr.backward(dy)
    assert_close(xt.grad, xr.grad, torch.float32, 54, "dx")
    for name, p, q in zip(("dw_weight", "dw_bias", "pw_weight", "pw_bias"), pt, pr):
        assert_close(p.grad, q.grad, torch.float32, 200, name)


@pytest.mark.parametrize("fused", [True, False])
def test_empty_batch_everywhere(fused):
    x = torch.randn(0, 3, 7, 7, device=DEVICE, requires_grad=True)
    layer = triton_dsd.DepthwiseSeparableDilatedConv2d(3, 5, 3, 2, "same", fused=fused).to(DEVICE)
    y = layer(x)
    assert y.shape == (0, 5, 7, 7)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in layer.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
    y1 = triton_dsd.dsd_conv1d(torch.randn(0, 3, 9, device=DEVICE), torch.randn(3, 1, 3, device=DEVICE),
                               None, torch.randn(2, 3, 1, device=DEVICE), None, 1, "causal", 2)
    assert y1.shape == (0, 2, 9)


@pytest.mark.parametrize("case", [
    dict(C=1, K=3, padding=1, dilation=1, extra=(2, 3)),               # C = 1
    dict(C=3, K=(1, 3), padding=(0, 1), dilation=1, extra=(0, 4)),     # H = 1
    dict(C=3, K=(3, 1), padding=(1, 0), dilation=2, extra=(1, 0)),     # W = 1
    dict(C=2, K=3, padding=4, dilation=4, extra=(-6, -6)),             # taps entirely in padding
    dict(C=2, K=3, padding=0, dilation=3, extra=(0, 0)),               # kernel == input
], ids=["C1", "H1", "W1", "taps-in-padding", "kernel-equals-input"])
@pytest.mark.parametrize("fused", [True, False])
def test_degenerate_shapes_whole_layer(case, fused):
    check_dsd(2, torch.float32, "cl", N=2, M=3, m=1, stride=1, biases=(True, True), fused=fused,
              **case)


@pytest.mark.portable
def test_offsets_past_int32_on_cpu_with_a_tiny_grid():
    """A view whose channel 1 starts at element 2^31 of its storage: every stage is right."""
    if DEVICE == "cuda":
        pytest.skip("the GPU script runs the real > 2^31-element tensor")
    res = reliability.large_offsets_small_grid("cpu")
    assert res["ok"], res
    assert ran("depthwise_fwd_kernel", "pointwise_fwd_kernel", "dsd_fwd_kernel")


def test_int64_index_path_compiles_without_spills(compile_report):
    """The 64-bit index arithmetic (IDX64) of every kernel that has it compiles offline for
    sm_80 and sm_90 without spills (the compile report builds these variants)."""
    rows = [r for r in compile_report if r["case"].endswith("IDX64")]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"depthwise_fwd_kernel", "depthwise_bwd_input_kernel",
                       "depthwise_bwd_weight_kernel", "pointwise_fwd_kernel",
                       "pointwise_bwd_weight_kernel", "dsd_fwd_kernel"}, kernels
    assert {r["arch"] for r in rows} == {80, 90}
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


_configs = st.fixed_dictionaries(dict(
    dim=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    layout=st.sampled_from(["nchw", "cl", "slice"]),
    C=st.integers(1, 9), M=st.integers(1, 9), m=st.integers(1, 2),
    K=st.integers(1, 5), dilation=st.integers(1, 3), stride=st.integers(1, 2),
    padding=st.sampled_from([0, 1, 2, "same", "valid", "causal"]),
    biases=st.sampled_from([(True, True), (False, False), (True, False)]),
    fused=st.booleans(), extra=st.integers(0, 4),
))


@settings(max_examples=int(os.environ.get("TRITON_DSD_HYPOTHESIS_EXAMPLES", 25)), deadline=None,
          database=None, print_blob=True)
@seed(HYPOTHESIS_SEED)
@given(cfg=_configs)
def test_property_random_layers_match_eager(cfg):
    if cfg["padding"] == "causal" and cfg["dim"] == 2:
        cfg["padding"] = "same"
    if cfg["padding"] in ("same", "causal"):
        cfg["stride"] = 1
    dim = cfg.pop("dim")
    extra = (cfg.pop("extra"),) * dim
    note(f"hypothesis seed {HYPOTHESIS_SEED} (TRITON_DSD_HYPOTHESIS_SEED={HYPOTHESIS_SEED})")
    check_dsd(dim, N=2, extra=extra, seed=HYPOTHESIS_SEED % 1000, **cfg)
