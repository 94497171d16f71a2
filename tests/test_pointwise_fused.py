"""Pointwise stage and the whole separable layer (fused and unfused) against eager in float64:
the output and all five gradients; the fused forward is one launch and keeps only x."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime
from triton_dsd.testing import assert_close, reference
from helpers import (DEVICE, DTYPES, case_id, check_dsd, pairwise, permuted_program_order, ran,
                     same_format, tf32_on, valid_geometry, with_layout)


@pytest.mark.portable
@pytest.mark.parametrize("case", pairwise(dict(
    C=[1, 5, 16, 40], M=[1, 7, 32, 70], dtype=DTYPES, layout=["nchw", "cl", "slice"],
    bias=[True, False], dim=[1, 2], hw=[(3, 5), (1, 7), (4, 1)]), seed=5), ids=case_id)
def test_pointwise_grid(case):
    C, M, dtype, layout, bias, dim = (case[k] for k in ("C", "M", "dtype", "layout", "bias", "dim"))
    g = torch.Generator().manual_seed(C * 100 + M)
    spatial = case["hw"] if dim == 2 else (case["hw"][0] * case["hw"][1],)
    x = torch.randn(2, C, *spatial, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(M, C, *(1,) * dim, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(M, generator=g, dtype=torch.float64).to(dtype) if bias else None
    x = with_layout(x.to(DEVICE), layout).requires_grad_()
    w = w.to(DEVICE).requires_grad_()
    b = b.to(DEVICE).requires_grad_() if bias else None
    fn = triton_dsd.pointwise_conv2d if dim == 2 else triton_dsd.pointwise_conv1d
    y = fn(x, w, b)
    xr, wr, br = reference(x), reference(w), reference(b)
    yr = (F.conv2d if dim == 2 else F.conv1d)(xr, wr, br)
    tf = tf32_on(dtype)
    assert_close(y, yr, dtype, C, "y", tf32=tf)
    if dim == 2:
        assert same_format(y, yr), (y.stride(), yr.stride())
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64).to(dtype)
    y.backward(dy.to(DEVICE))
    yr.backward(dy.double())
    pixels = 2 * math.prod(spatial)
    assert_close(x.grad, xr.grad, dtype, M, "dx", tf32=tf)
    assert_close(w.grad, wr.grad, dtype, pixels, "dw", tf32=tf)
    if bias:
        assert_close(b.grad, br.grad, dtype, pixels, "db")
    assert ran("pointwise_fwd_kernel", "pointwise_bwd_weight_kernel", "splitk_reduce_kernel")


DSD_GRID = pairwise(dict(
    dim=[2, 1],
    C=[1, 5, 16, 40],
    M=[1, 7, 32, 70],
    K=[1, 2, 3, 5, 7],
    dilation=[1, 2, 3],
    stride=[1, 2],
    padding=[0, 1, "same", "valid"],
    m=[1, 2],
    dtype=DTYPES,
    layout=["nchw", "cl", "slice"],
    biases=[(True, True), (False, True), (True, False)],
    fused=[True, False],
), valid=valid_geometry, seed=7)


@pytest.mark.parametrize("case", DSD_GRID, ids=case_id)
def test_dsd_grid(case):
    extra = (1, 4) if case["dim"] == 2 else (5,)
    check_dsd(N=2, extra=extra, seed=len(case_id(case)), **case)


@pytest.mark.portable
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", [
    dict(dim=2, K=(3, 2), padding=(1, 2), stride=1, dilation=2),
    dict(dim=2, K=2, padding="same", stride=1, dilation=3),
    dict(dim=1, K=3, padding="causal", stride=1, dilation=4),
    dict(dim=2, K=3, padding=(0, 1), stride=2, dilation=1),
], ids=["nonsquare", "even-same", "causal", "stride2"])
def test_dsd_named_cases(case, fused):
    check_dsd(dtype=torch.float32, layout="cl", N=2, C=5, M=7, m=2, biases=(True, True),
              extra=(2, 3) if case["dim"] == 2 else (4,), fused=fused, **case)


def _layer_grads(deterministic: bool, order_seed=None):
    """All five gradients of a fused layer whose weight gradients are split reductions (the
    interpreter gets >= 2 splits from N=6), optionally with the programs run in a permuted
    order."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, 9, 9, generator=g).to(DEVICE).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    p = [t.to(DEVICE).requires_grad_() for t in (
        torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g),
        torch.randn(16, 8, 1, 1, generator=g), torch.randn(16, generator=g))]
    dy = torch.randn(6, 16, 9, 9, generator=g).to(DEVICE)
    with (permuted_program_order(order_seed) if order_seed is not None
          else contextlib.nullcontext()):
        triton_dsd.dsd_conv2d(x, *p, 1, 2, 2, deterministic=deterministic).backward(dy)
    return [t.grad.clone() for t in (x, *p)]


@pytest.mark.portable
def test_deterministic_gradients_do_not_depend_on_program_order():
    """deterministic=True: every program writes its own partial sums and one kernel adds them
    in a fixed order, so running the programs in another order changes no bit. The atomic
    path run the same way does change (that is what makes this test able to fail)."""
    if not _runtime.INTERPRET:  # on a GPU the hardware picks the order: repeat runs instead
        first = _layer_grads(True)
        for _ in range(3):
            assert all(torch.equal(a, b) for a, b in zip(first, _layer_grads(True)))
        return
    base = _layer_grads(True)
    for seed in (1, 2):
        for a, b in zip(base, _layer_grads(True, order_seed=seed)):
            assert torch.equal(a, b)
    atomic = _layer_grads(False)
    shuffled = _layer_grads(False, order_seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(atomic, shuffled)), \
        "the permuted program order changed nothing: the test cannot tell the paths apart"
    for a, b in zip(atomic, base):  # both paths are right, only the last bits differ
        assert_close(a, b.double(), torch.float32, 500)


@pytest.mark.portable
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_dsd_gradcheck_fp64(dim, fused):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()  # noqa
    if dim == 2:
        args = (r(1, 2, 4, 5), r(4, 1, 3, 2), r(4), r(3, 4, 1, 1), r(3))
        fn = lambda *a: triton_dsd.dsd_conv2d(*a, 1, "same", 2, fused=fused)  # noqa: E731
    else:
        args = (r(2, 3, 9), r(3, 1, 3), r(3), r(4, 3, 1), r(4))
        fn = lambda *a: triton_dsd.dsd_conv1d(*a, 1, "causal", 2, fused=fused)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradcheck(lambda *a: fn(*a).square().sum(), args, fast_mode=True)


def _saved_bytes(fn, *args):
    """(activation bytes, parameter bytes) saved for backward by fn(*args)."""
    params = {id(a) for a in args[1:] if a is not None}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    act = sum(t.numel() * t.element_size() for t in saved
              if id(t) not in params and t.data_ptr() != args[0].data_ptr())
    x_saved = any(t.data_ptr() == args[0].data_ptr() for t in saved)
    return act, x_saved


def test_fused_saves_only_x():
    """Fused: the only activation saved is x itself; unfused and eager also keep z."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 9, generator=g).to(DEVICE).requires_grad_()
    p = [torch.randn(16, 1, 3, 3, generator=g), torch.randn(16, generator=g),
         torch.randn(8, 16, 1, 1, generator=g), torch.randn(8, generator=g)]
    p = [t.to(DEVICE).requires_grad_() for t in p]
    fused = _saved_bytes(lambda *a: triton_dsd.dsd_conv2d(*a, 1, 2, 2, fused=True), x, *p)
    unfused = _saved_bytes(lambda *a: triton_dsd.dsd_conv2d(*a, 1, 2, 2, fused=False), x, *p)
    z_bytes = 2 * 16 * 9 * 9 * 4
    assert fused == (0, True), fused           # nothing but x (and the parameters)
    assert unfused[0] == z_bytes and unfused[1], unfused


def test_bf16_dot_shim_only_when_interpreting():
    """The interpreter fix for bf16 tl.dot is installed exactly when interpreting."""
    if not _runtime.INTERPRET:
        pytest.skip("GPU run: nothing is patched")
    from triton.runtime import interpreter
    assert getattr(interpreter.InterpreterBuilder.create_dot, "_triton_dsd_bf16", False)
    x = torch.randn(1, 16, 4, 4).bfloat16()
    w = torch.randn(16, 16, 1, 1).bfloat16()
    y = triton_dsd.pointwise_conv2d(x, w)
    assert_close(y, F.conv2d(x.double(), w.double()), torch.bfloat16, 16)


def test_saved_activation_bytes_realistic_layer(capsys):
    """N=8, C=128, M=128, 56x56, bf16, 3x3 d2 'same': measured with fake tensors (no compute).
    Fused keeps x only (6.1 MiB); eager (two nn.Conv2d) keeps x and z (12.2 MiB)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch import nn

    def saved(fn):
        seen = {}

        def pack(t):
            seen[(t.data_ptr() if not isinstance(t, torch._subclasses.FakeTensor) else id(t))] = t
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return [t for t in seen.values() if not isinstance(t, nn.Parameter) and t.dim() == 4
                and t.shape[1] != 1 and t.shape[2:] != (1, 1)]

    with FakeTensorMode():
        x = torch.empty(8, 128, 56, 56, dtype=torch.bfloat16, device=DEVICE,
                        requires_grad=True).contiguous(memory_format=torch.channels_last)
        dw = nn.Conv2d(128, 128, 3, padding="same", dilation=2, groups=128, device=DEVICE,
                       dtype=torch.bfloat16)
        pw = nn.Conv2d(128, 128, 1, device=DEVICE, dtype=torch.bfloat16)
        fused = saved(lambda: triton_dsd.dsd_conv2d(x, dw.weight, dw.bias, pw.weight, pw.bias, 1,
                                                    "same", 2, fused=True))
        unfused = saved(lambda: triton_dsd.dsd_conv2d(x, dw.weight, dw.bias, pw.weight, pw.bias,
                                                      1, "same", 2, fused=False))
        eager = saved(lambda: pw(dw(x)))
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    x_bytes = 8 * 128 * 56 * 56 * 2
    with capsys.disabled():
        print(f"\nsaved activations, 8x128x56x56 -> 128 bf16: fused {nbytes(fused) / 2**20:.2f} MiB, "
              f"unfused {nbytes(unfused) / 2**20:.2f} MiB, eager {nbytes(eager) / 2**20:.2f} MiB")
    assert nbytes(fused) == x_bytes
    assert nbytes(unfused) == 2 * x_bytes
    assert nbytes(eager) == 2 * x_bytes
