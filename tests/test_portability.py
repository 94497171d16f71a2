"""A compact, representative matrix that every supported Triton must pass: every kernel family
(depthwise forward / dX / dW, the split-reduction finish, the pointwise GEMM forward / dX / dW,
the fused forward), every dtype, both layouts, 1D and 2D, fused and not, the deterministic
path, and fp64 gradcheck through tl.dot (Triton 3.6 needs its out_dtype explicit).

CI runs this file (with the tests marked ``portable``) a second time under Triton 3.6, the
version lent GPU machines carry; the full suite runs under the newest Triton.
"""
import itertools

import pytest
import torch

import triton_dsd
from helpers import DEVICE, DTYPES, case_id, check_dsd

pytestmark = pytest.mark.portable

MATRIX = [dict(dtype=dt, layout=lay, fused=fu, dim=1 + (i % 2))
          for i, (dt, lay, fu) in enumerate(itertools.product(DTYPES, ["nchw", "cl"],
                                                              [True, False]))]


@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_whole_layer_every_dtype_layout_and_path(case):
    dim = case["dim"]
    check_dsd(dim, case["dtype"], case["layout"], N=2, C=5, M=7, m=2 if dim == 2 else 1,
              K=3, stride=1, padding="same", dilation=2, biases=(True, True),
              extra=(1, 4) if dim == 2 else (6,), fused=case["fused"],
              deterministic=case["dtype"] == torch.float32, seed=len(case_id(case)))


def test_strided_and_large_kernel_paths():
    """Stride 2 (the dX gather's remainder test) and a 7x7 kernel (the row loop)."""
    check_dsd(2, torch.float32, "cl", N=1, C=3, M=4, m=1, K=3, stride=2, padding=1, dilation=1,
              biases=(True, False), extra=(2, 3), fused=True)
    check_dsd(2, torch.float16, "nchw", N=1, C=2, M=3, m=1, K=7, stride=1, padding="same",
              dilation=1, biases=(False, True), extra=(1, 2), fused=True)


def test_fp64_gradcheck_through_the_fused_dot():
    g = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
                 for s in ((1, 2, 4, 5), (4, 1, 3, 2), (4,), (3, 4, 1, 1), (3,)))
    fn = lambda *a: triton_dsd.dsd_conv2d(*a, 1, "same", 2, fused=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
