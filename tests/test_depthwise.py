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
