"""The depthwise stage against eager PyTorch in float64: forward, dx, dw, db.

The option grid is covered pairwise (every value of every option appears, every pair of values
meets at least once) plus named hard cases; all outputs start poisoned with NaN and every case
proves the Triton kernels ran.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd.testing import assert_close, reference
from conftest import DEVICE, ran, same_format
from pairwise import pairwise

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KERNELS = ("depthwise_fwd_kernel", "depthwise_bwd_input_kernel", "depthwise_bwd_weight_kernel",
           "splitk_reduce_kernel")


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """nchw: contiguous; cl: channels_last (2D) / channel-last strides (1D); slice: a strided view."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "cl":
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    # a non-contiguous view: every other element along the last dim of a wider tensor
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return wide[..., ::2]


def _eager(x, w, b, stride, padding, dilation, dim):
    conv = F.conv2d if dim == 2 else F.conv1d
    if padding == "causal":
        x = F.pad(x, (dilation * (w.shape[-1] - 1), 0))
        padding = 0
    return conv(x, w, b, stride, padding, dilation, groups=x.shape[1])


def check_case(dim, dtype, layout, N, C, m, K, stride, padding, dilation, bias, extra,
               deterministic=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    ks = K if isinstance(K, tuple) else (K,) * dim
    ds = (dilation,) * dim
    spatial = [d * (k - 1) + 1 + e for k, d, e in zip(ks, ds, extra)]
    x = torch.randn(N, C, *spatial, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(C * m, 1, *ks, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(C * m, generator=g, dtype=torch.float64).to(dtype) if bias else None
    x = _layout(x.to(DEVICE), layout).requires_grad_()
    w = w.to(DEVICE).requires_grad_()
    b = b.to(DEVICE).requires_grad_() if bias else None
    fn = triton_dsd.depthwise_conv2d if dim == 2 else triton_dsd.depthwise_conv1d
    y = fn(x, w, b, stride, padding, dilation, deterministic=deterministic)

    xr, wr, br = reference(x), reference(w), reference(b)
    yr = _eager(xr, wr, br, stride, padding, dilation, dim)
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64).to(dtype)
    taps = math.prod(ks)
    assert_close(y, yr, dtype, taps, "y")
    if dim == 2:  # the output keeps the input's memory format, as eager's does
        assert same_format(y, yr), f"strides {y.stride()} vs eager {yr.stride()}"
    elif layout == "cl" and C > 1:
        assert y.stride(1) == 1, f"1D channel-last input gave output strides {y.stride()}"
    y.backward(dy.to(DEVICE))
    yr.backward(dy.double())
    pixels = N * math.prod(yr.shape[2:])
    assert_close(x.grad, xr.grad, dtype, taps * m, "dx")
    assert_close(w.grad, wr.grad, dtype, pixels, "dw")
    if bias:
        assert_close(b.grad, br.grad, dtype, pixels, "db")
    assert ran(*KERNELS), "a Triton kernel did not run"


def _valid(c):
    if c["padding"] in ("same", "causal") and c["stride"] != 1:
        return False
    return True


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
), valid=_valid, seed=2)

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
), valid=_valid, seed=3)


def _id(c):
    return "-".join(f"{k}={getattr(v, '__name__', str(v)).replace('torch.', '').replace(' ', '')}"
                    for k, v in c.items())


@pytest.mark.parametrize("case", GRID_2D, ids=_id)
def test_depthwise2d_grid(case):
    check_case(dim=2, N=2, seed=len(_id(case)), **case)


@pytest.mark.parametrize("case", GRID_1D, ids=_id)
def test_depthwise1d_grid(case):
    check_case(dim=1, N=2, seed=len(_id(case)), **case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl", "slice"])
def test_every_dtype_and_layout_2d(dtype, layout):
    """The common case, every dtype x layout: C=5, odd W=13, 3x3 dilation 2, 'same'."""
    check_case(2, dtype, layout, N=2, C=5, m=1, K=3, stride=1, padding="same", dilation=2,
               bias=True, extra=(3, 8))


@pytest.mark.parametrize("case", [
    dict(K=3, stride=1, padding=0, dilation=1, extra=(0, 0)),          # kernel == input: 1x1 output
    dict(K=3, stride=1, padding=3, dilation=4, extra=(-4, -4)),        # taps entirely in padding
    dict(K=2, stride=1, padding="same", dilation=3, extra=(2, 3)),     # even K: asymmetric 'same'
    dict(K=(1, 5), stride=2, padding=(0, 2), dilation=2, extra=(3, 4)),
    dict(K=(5, 1), stride=(2, 1), padding=(2, 0), dilation=1, extra=(2, 6)),
], ids=["k-equals-input", "taps-in-padding", "even-k-same", "1x5-s2", "5x1-s21"])
def test_hard_cases_2d(case):
    check_case(2, torch.float32, "nchw", N=1, C=4, m=2, bias=True, **case)


def test_h_or_w_equal_one():
    check_case(2, torch.float32, "cl", N=2, C=3, m=1, K=(1, 3), stride=1, padding=(0, 1),
               dilation=1, bias=True, extra=(0, 6))
    check_case(2, torch.float32, "nchw", N=2, C=3, m=1, K=(3, 1), stride=1, padding=(1, 0),
               dilation=2, bias=True, extra=(2, 0))


@pytest.mark.parametrize("dim", [1, 2])
def test_gradcheck_fp64(dim):
    g = torch.Generator().manual_seed(0)
    if dim == 2:
        x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
        w = torch.randn(4, 1, 2, 3, generator=g, dtype=torch.float64)
        fn = lambda x, w, b: triton_dsd.depthwise_conv2d(x, w, b, (2, 1), "valid", (1, 2))  # noqa
        fn2 = lambda x, w, b: triton_dsd.depthwise_conv2d(x, w, b, 1, "same", (2, 1))  # noqa
    else:
        x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
        w = torch.randn(3, 1, 3, generator=g, dtype=torch.float64)
        fn = lambda x, w, b: triton_dsd.depthwise_conv1d(x, w, b, 2, 1, 2)  # noqa
        fn2 = lambda x, w, b: triton_dsd.depthwise_conv1d(x, w, b, 1, "causal", 2)  # noqa
    b = torch.randn(w.shape[0], generator=g, dtype=torch.float64)
    args = tuple(t.to(DEVICE).requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradcheck(fn2, args)
    assert ran(*KERNELS)


def test_empty_batch():
    x = torch.randn(0, 3, 7, 7, device=DEVICE, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, device=DEVICE, requires_grad=True)
    y = triton_dsd.depthwise_conv2d(x, w, None, 1, 1, 1)
    assert y.shape == (0, 6, 7, 7)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad is not None
    assert torch.equal(w.grad, torch.zeros_like(w))
