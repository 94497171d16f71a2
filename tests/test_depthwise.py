"""The depthwise stage against eager PyTorch in float64: forward, dx, dw, db.

The option grid is covered pairwise (every value of every option appears, every pair of values
meets at least once) plus named hard cases; all outputs start poisoned with NaN and every case
proves the Triton kernels ran.
"""
import pytest
import torch

import triton_dsd
from helpers import (DEPTHWISE_KERNELS, DEVICE, DTYPES, case_id, check_depthwise, pairwise, ran,
                     valid_geometry)

GRID_2D = pairwise(dict(
    K=[1, 2, 3, 5, 7, (3, 2), (1, 4)],
    dilation=[1, 2, 3],
    stride=[1, 2],
    padding=[0, 1, "same", "valid", (1, 2)],
    m=[1, 2],
    C=[1, 3, 8, 17],
    dtype=DTYPES,
    layout=["nchw", "cl", "slice"],
    bias=[True, False],
    extra=[(0, 4), (2, 5), (5, 0)],
), valid=valid_geometry, seed=2)

GRID_1D = pairwise(dict(
    K=[1, 2, 3, 5, 7],
    dilation=[1, 2, 3],
    stride=[1, 2],
    padding=[0, 1, "same", "valid", "causal"],
    m=[1, 2],
    C=[1, 3, 8, 17],
    dtype=DTYPES,
    layout=["nchw", "cl", "slice"],
    bias=[True, False],
    extra=[(0,), (3,), (8,)],
), valid=valid_geometry, seed=3)


@pytest.mark.parametrize("case", GRID_2D, ids=case_id)
def test_depthwise2d_grid(case):
    check_depthwise(dim=2, N=2, seed=len(case_id(case)), **case)


@pytest.mark.parametrize("case", GRID_1D, ids=case_id)
def test_depthwise1d_grid(case):
    check_depthwise(dim=1, N=2, seed=len(case_id(case)), **case)


@pytest.mark.portable
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl", "slice"])
def test_every_dtype_and_layout_2d(dtype, layout):
    """The common case, every dtype x layout: C=5, odd W=13, 3x3 dilation 2, 'same'."""
    check_depthwise(2, dtype, layout, N=2, C=5, m=1, K=3, stride=1, padding="same", dilation=2,
               bias=True, extra=(3, 8))


@pytest.mark.portable
@pytest.mark.parametrize("case", [
    dict(K=3, stride=1, padding=0, dilation=1, extra=(0, 0)),          # kernel == input: 1x1 output
    dict(K=3, stride=1, padding=3, dilation=4, extra=(-4, -4)),        # taps entirely in padding
    dict(K=2, stride=1, padding="same", dilation=3, extra=(2, 3)),     # even K: asymmetric 'same'
    dict(K=(1, 5), stride=2, padding=(0, 2), dilation=2, extra=(3, 4)),
    dict(K=(5, 1), stride=(2, 1), padding=(2, 0), dilation=1, extra=(2, 6)),
], ids=["k-equals-input", "taps-in-padding", "even-k-same", "1x5-s2", "5x1-s21"])
def test_hard_cases_2d(case):
    check_depthwise(2, torch.float32, "nchw", N=1, C=4, m=2, bias=True, **case)


def test_h_or_w_equal_one():
    check_depthwise(2, torch.float32, "cl", N=2, C=3, m=1, K=(1, 3), stride=1, padding=(0, 1),
               dilation=1, bias=True, extra=(0, 6))
    check_depthwise(2, torch.float32, "nchw", N=2, C=3, m=1, K=(3, 1), stride=1, padding=(1, 0),
               dilation=2, bias=True, extra=(2, 0))


@pytest.mark.portable
@pytest.mark.parametrize("dim", [1, 2])
def test_gradcheck_fp64(dim):
    """float64 gradcheck (fast mode: a random projection; the float64 grids above already check
    every gradient element-wise) on tiny shapes, with stride, dilation and padding."""
    g = torch.Generator().manual_seed(0)
    if dim == 2:
        x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)
        w = torch.randn(4, 1, 2, 3, generator=g, dtype=torch.float64)
        fn = lambda x, w, b: triton_dsd.depthwise_conv2d(x, w, b, (2, 1), "valid", (1, 2))  # noqa
        fn2 = lambda x, w, b: triton_dsd.depthwise_conv2d(x, w, b, 1, "same", (2, 1))  # noqa
    else:
        x = torch.randn(1, 3, 8, generator=g, dtype=torch.float64)
        w = torch.randn(3, 1, 3, generator=g, dtype=torch.float64)
        fn = lambda x, w, b: triton_dsd.depthwise_conv1d(x, w, b, 2, 1, 2)  # noqa
        fn2 = lambda x, w, b: triton_dsd.depthwise_conv1d(x, w, b, 1, "causal", 2)  # noqa
    b = torch.randn(w.shape[0], generator=g, dtype=torch.float64)
    args = tuple(t.to(DEVICE).requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradcheck(fn2, args, fast_mode=True)
    assert ran(*DEPTHWISE_KERNELS)


def test_empty_batch():
    x = torch.randn(0, 3, 7, 7, device=DEVICE, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, device=DEVICE, requires_grad=True)
    y = triton_dsd.depthwise_conv2d(x, w, None, 1, 1, 1)
    assert y.shape == (0, 6, 7, 7)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad is not None
    assert torch.equal(w.grad, torch.zeros_like(w))


def _large_k(K, d, s, pad, layout, dtype, L, N=1, m=1, bias=True):
    return dict(K=K, dilation=d, stride=s, padding=pad, layout=layout, dtype=dtype, L=L, N=N,
                m=m, bias=bias)


f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
#: speech models' large 1D kernels (QuartzNet / Citrinet: K 11..87, dilation 1..4): rows of
#: more than ROW_LOOP_TAPS taps loop over their tap groups (NCL: a sliding window at stride
#: 1). Every K, d, stride, padding kind, layout and dtype appears and meets the others; lengths
#: 13 (every group of every program reads padding), 100 and 300 (programs whose windows lie
#: inside the input, many trips); odd paddings at stride 2 give the input gradient a phase.
LARGE_K_1D = [
    # NCL: one channel a program, 32 outputs a thread (the costly tile under the interpreter)
    _large_k(33, 1, 1, "same", "nchw", f64, 300),
    _large_k(33, 4, 2, 70, "nchw", f32, 13),
    _large_k(63, 4, 1, "causal", "nchw", f32, 300, N=2, bias=False),
    _large_k(87, 1, 1, "causal", "nchw", bf16, 100),
    _large_k(87, 2, 1, "same", "nchw", f64, 300, bias=False),
    _large_k(87, 4, 2, 173, "nchw", f64, 13),
    # NLC: channel vectors
    _large_k(33, 2, 1, "causal", "cl", f32, 100, bias=False),
    _large_k(33, 2, 2, 0, "cl", f64, 300, N=3),
    _large_k(33, 1, 1, "same", "cl", bf16, 13, bias=False),
    _large_k(63, 2, 1, "same", "cl", bf16, 300),
    _large_k(63, 4, 1, "same", "cl", f64, 13),
    _large_k(63, 1, 1, 5, "cl", f32, 100, m=2),
    _large_k(63, 2, 2, 63, "cl", f32, 13),
    _large_k(87, 4, 1, "same", "cl", f32, 300),
    _large_k(87, 1, 2, 0, "cl", f32, 100, N=2),
    _large_k(87, 2, 1, "causal", "cl", bf16, 13),
    _large_k(87, 1, 1, "same", "cl", f16, 100, m=2),
    _large_k(87, 2, 2, 31, "cl", f64, 300),
]


def _large_k_id(c):
    return (f"K{c['K']}-d{c['dilation']}-s{c['stride']}-p{c['padding']}-{c['layout']}-"
            f"{str(c['dtype'])[6:]}-L{c['L']}-N{c['N']}-m{c['m']}")


@pytest.mark.parametrize("case", LARGE_K_1D, ids=_large_k_id)
def test_large_kernel_1d_gpu_tiles(case, monkeypatch, launch_log):
    """Forward, dX (transposed windows), dW and db of K33..87 rows on the GPU's default tiles
    (NCL: one channel, 32 outputs a thread; NLC: channel vectors), against eager in fp64."""
    from triton_dsd import configs
    monkeypatch.setattr(configs, "INTERPRETER_TILES", False)
    c = dict(case)
    L, K, d = c.pop("L"), c["K"], c["dilation"]
    check_depthwise(dim=1, C=5, extra=(L - d * (K - 1) - 1,), seed=K + d, **c)
    fwd = [kw for name, kw, _ in launch_log if name == "depthwise_fwd_kernel"]
    assert fwd and fwd[0]["KW"] == K
    if c["layout"] == "nchw":  # the GPU's NCL tile, not the interpreter's
        assert (fwd[0]["BLOCK_C"], fwd[0]["BLOCK_R"]) == (1, 128)
    else:
        assert fwd[0]["BLOCK_C"] == 8 * c["m"] and fwd[0]["BLOCK_W"] <= 8


@pytest.mark.parametrize("case", [
    _large_k(87, 1, 1, "same", "nchw", f32, 100),
    _large_k(33, 2, 1, "causal", "cl", f64, 300),
    _large_k(63, 4, 2, 125, "cl", f32, 13),
    _large_k(87, 4, 1, "same", "nchw", f64, 13, bias=False),
], ids=_large_k_id)
def test_large_kernel_1d_fused(case, monkeypatch):
    """The fused forward (its own tap loop: one tap an iteration past a few taps) and the
    layer's gradients at K33..87 on the GPU's default tiles."""
    from helpers import check_dsd
    from triton_dsd import configs
    monkeypatch.setattr(configs, "INTERPRETER_TILES", False)
    c = dict(case)
    L, K, d = c.pop("L"), c["K"], c["dilation"]
    check_dsd(1, c["dtype"], c["layout"], N=c["N"], C=5, M=3, m=c["m"], K=K, stride=c["stride"],
              padding=c["padding"], dilation=d, biases=(c["bias"], True),
              extra=(L - d * (K - 1) - 1,), fused=True, seed=K)
