"""Request counts under the interpreter: how often each kernel loads each element of each tensor
(``triton_dsd.testing.count_requests``), against what the kernel designs promise.

These count the program text's loads by active lanes (the algorithm); the SASS side (layouts,
instructions) is the performance model's (``tests/test_perf_model.py``).
"""
import pytest
import torch

from triton_dsd import launchers, perf_model, shapes
from triton_dsd.testing import count_requests

from helpers import DEVICE

# the counter wraps the interpreter's loads: the same on Triton 3.6 (the GPU machines') and 3.9
pytestmark = [pytest.mark.skipif(DEVICE != "cpu", reason="counts the interpreter's loads"),
              pytest.mark.portable]


def _one(records, kernel):
    found = [r for r in records if r.kernel == kernel]
    assert len(found) == 1, [r.kernel for r in records]
    return found[0]


def _useful_taps(H, W, OH, OW, K, stride, pads, dilation):
    """Sum over output positions of the taps inside the input (both axes)."""
    th = perf_model._valid_taps(OH, H, K[0], stride[0], pads[0], dilation[0])
    tw = perf_model._valid_taps(OW, W, K[1], stride[1], pads[2], dilation[1])
    return th * tw


def test_counter_counts_active_lanes_only():
    """A 1x1 'depthwise' with no padding loads each x element exactly once, and the weights once
    per program; masked-off lanes (the tile past the image) count nothing."""
    x = torch.randn(1, 3, 5, 7, device=DEVICE)
    w = torch.randn(3, 1, 1, 1, device=DEVICE)
    with count_requests() as recs:
        launchers.depthwise_fwd(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), False)
    r = _one(recs, "depthwise_fwd_kernel")
    assert torch.equal(r.counts["x_ptr"], torch.ones_like(x, dtype=torch.int64))
    assert r.total("y_ptr") == 0  # stores are not loads


@pytest.mark.parametrize("layout", ["cl", "nchw"])
@pytest.mark.parametrize("K,d", [(3, 1), (5, 2)])
def test_depthwise_window_loads_each_input_once_per_kernel_row(layout, K, d):
    """The register window: each x element is loaded about once per kernel row (plus the halo
    of neighbouring segments), not once per tap as a tap-by-tap kernel does (K*K)."""
    x = torch.randn(2, 4, 9, 24, device=DEVICE)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, K, K, device=DEVICE)
    pads = shapes.resolve_padding("same", (K, K), (1, 1), (d, d))
    cfg = dict(BLOCK_R=16, BLOCK_W=8, BLOCK_C=4, num_warps=4)
    with count_requests() as recs:
        launchers.depthwise_fwd(x, w, None, (1, 1), pads, (d, d), layout == "cl", cfg=cfg)
    r = _one(recs, "depthwise_fwd_kernel")
    per_x = r.per_element("x_ptr")
    halo = 1 + (K - 1) * d / cfg["BLOCK_W"]
    assert per_x <= K * halo, per_x
    assert per_x < K * K * 0.75, per_x  # what a tap-by-tap kernel would need, less the border


def test_depthwise_weight_gradient_loads_dy_once():
    """Tiles outer, taps inner: each dy element is requested at most 1.25 times on the way to
    dW (issue 2/4's target; a taps-outer kernel loads it K*K + 1 times)."""
    x = torch.randn(2, 8, 12, 16, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 3, 3, device=DEVICE)
    pads = shapes.resolve_padding("same", (3, 3), (1, 1), (2, 2))
    dy = torch.randn(2, 8, 12, 16, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with count_requests() as recs:
        launchers.depthwise_bwd_weight(dy, x, w, (1, 1), pads, (2, 2), True, True)
    r = _one(recs, "depthwise_bwd_weight_kernel")
    assert r.per_element("dy_ptr") <= 1.25, r
    assert r.counts["dy_ptr"].min() >= 1  # every element is read


def _fused(M, cfg, C=4, K=3, d=2):
    x = torch.randn(2, C, 6, 10, device=DEVICE).contiguous(memory_format=torch.channels_last)
    wd = torch.randn(C, 1, K, K, device=DEVICE)
    wp = torch.randn(M, C, 1, 1, device=DEVICE)
    pads = shapes.resolve_padding("same", (K, K), (1, 1), (d, d))
    with count_requests() as recs:
        launchers.dsd_fwd(x, wd, None, wp, None, (1, 1), pads, (d, d), True, cfg=cfg)
    r = _one(recs, "dsd_fwd_kernel")
    useful = x.shape[0] * C * _useful_taps(6, 10, 6, 10, (K, K), (1, 1), pads, (d, d))
    return r.total("x_ptr"), useful, r


def test_fused_forward_computes_each_depthwise_product_once():
    """z-stationary: with several M blocks, every useful depthwise multiply (a tap inside the
    input, for a real pixel and channel) loads its x element exactly once: z is not recomputed
    per M block, and no padded lane loads."""
    cfg = dict(BLOCK_P=64, BLOCK_M=16, BLOCK_K=16, num_warps=4, num_stages=2)
    loads, useful, r = _fused(M=48, cfg=cfg)
    assert loads == useful, (loads, useful)


def test_request_count_can_fail_recompute_path_is_seen():
    """The same count on the recompute path (BLOCK_K below C*m: z per M block) is M/BLOCK_M
    times the useful multiplies: the test above can fail."""
    cfg = dict(BLOCK_P=64, BLOCK_M=16, BLOCK_K=16, num_warps=4, num_stages=2)
    loads, useful, _ = _fused(M=48, cfg=cfg, C=32)
    assert loads == 3 * useful, (loads, useful)
