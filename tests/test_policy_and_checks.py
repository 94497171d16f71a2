"""Device policy, determinism, and the tests' own ability to fail."""
import contextlib
import os

import pytest
import torch
import torch.nn.functional as F

import triton_dsd
from triton_dsd import _runtime, launchers
from helpers import DEVICE, check_depthwise, permuted_program_order, run_fresh


def test_cpu_without_interpreter_runs_eager():
    """CPU tensors without TRITON_INTERPRET take the eager path: right values, no launch."""
    code = (
        "import torch, torch.nn.functional as F, triton_dsd\n"
        "from triton_dsd import _runtime\n"
        "x = torch.randn(2, 3, 9, 8); w = torch.randn(6, 1, 2, 3); b = torch.randn(6)\n"
        "y = triton_dsd.depthwise_conv2d(x, w, b, 1, 'same', 2)\n"
        "r = F.conv2d(F.pad(x, (2, 2, 1, 1)), w, b, 1, 0, 2, groups=3)\n"
        "assert torch.allclose(y, r, atol=1e-5), (y - r).abs().max()\n"
        "assert sum(_runtime.LAUNCHES.values()) == 0\n"
        "assert not triton_dsd.use_triton(x)\n"
        "print('eager-ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = run_fresh("-c", code, env=env)
    assert out.returncode == 0 and "eager-ok" in out.stdout, out.stderr


def test_triton_path_taken_here():
    x = torch.randn(1, 2, 5, 5, device=DEVICE)
    assert triton_dsd.use_triton(x)
    triton_dsd.depthwise_conv2d(x, torch.randn(2, 1, 3, 3, device=DEVICE))
    assert _runtime.LAUNCHES["depthwise_fwd_kernel"] == 1


def test_poisoned_output_is_caught(monkeypatch):
    """If the forward kernel never wrote its output, the NaN poison makes the check fail."""
    real = _runtime.launch

    def skip_forward(kernel, grid, *args, **kwargs):
        if kernel.fn.__name__ == "depthwise_fwd_kernel":
            _runtime.LAUNCHES[kernel.fn.__name__] += 1  # pretend it ran
            return
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_runtime, "launch", skip_forward)
    with pytest.raises(AssertionError, match="NaN"):
        check_depthwise(2, torch.float32, "nchw", N=1, C=2, m=1, K=3, stride=1, padding=1,
                   dilation=1, bias=True, extra=(2, 2))


def _dw_path(launch_log, deterministic, order_seed=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 12, 13, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(4, 1, 3, 3, generator=g).to(DEVICE).requires_grad_()
    b = torch.zeros(4, device=DEVICE, requires_grad=True)
    order = (permuted_program_order(order_seed) if order_seed is not None and _runtime.INTERPRET
             else contextlib.nullcontext())
    with order:
        y = triton_dsd.depthwise_conv2d(x, w, b, 1, 2, 2, deterministic=deterministic)
        y.backward(torch.randn(y.shape, generator=g).to(DEVICE))
    dw_launches = [(kw, grid) for name, kw, grid in launch_log
                   if name == "depthwise_bwd_weight_kernel"]
    fin = [grid for name, _, grid in launch_log if name == "splitk_reduce_kernel"]
    assert len(dw_launches) == 1 and len(fin) == 2  # dw and db finished in a fixed order
    return dw_launches[0], w.grad.clone(), b.grad.clone()


def test_deterministic_flag_selects_atomic_free_path(launch_log):
    (kw, grid), dw1, db1 = _dw_path(launch_log, deterministic=True)
    assert kw["ATOMIC"] is False and grid[1] > 1  # several splits: their order matters
    launch_log.clear()
    _, dw2, db2 = _dw_path(launch_log, deterministic=True, order_seed=3)
    assert torch.equal(dw1, dw2) and torch.equal(db1, db2)
    launch_log.clear()
    (kw, _), _, _ = _dw_path(launch_log, deterministic=False)
    assert kw["ATOMIC"] is True


def test_use_deterministic_algorithms_selects_atomic_free_path(launch_log):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        (kw, _), _, _ = _dw_path(launch_log, deterministic=None)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert kw["ATOMIC"] is False


def test_deterministic_uses_several_splits():
    """The partial-sum path really splits the reduction (so the finalize order matters)."""
    n_splits, per_split = launchers.reduction_splits(total_tiles=10, c_blocks=1,
                                                     device=torch.device("cpu"))
    assert n_splits > 1 and n_splits * per_split >= 10


def test_non_contiguous_and_expanded_biases():
    """Biases are read as contiguous vectors: strided and stride-0 views must still be right."""
    from triton_dsd.testing import assert_close
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64).to(DEVICE)
    w = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64).to(DEVICE)
    pw = torch.randn(3, 4, 1, 1, generator=g, dtype=torch.float64).to(DEVICE)
    b = torch.randn(8, generator=g, dtype=torch.float64).to(DEVICE)[::2]
    pb = torch.tensor(0.5, dtype=torch.float64, device=DEVICE).expand(3)
    z = F.conv2d(x.cpu(), w.cpu(), b.cpu(), 1, 1, 1, groups=4)
    assert_close(triton_dsd.depthwise_conv2d(x, w, b, 1, 1), z, torch.float64, 9)
    assert_close(triton_dsd.pointwise_conv2d(x, pw, pb), F.conv2d(x.cpu(), pw.cpu(), pb.cpu()),
                 torch.float64, 4)
    assert_close(triton_dsd.dsd_conv2d(x, w, b, pw, pb, 1, 1), F.conv2d(z, pw.cpu(), pb.cpu()),
                 torch.float64, 36)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_grids_respect_cuda_limits_for_huge_channel_counts(layout):
    """CUDA grid axes 1 and 2 hold at most 65535 programs: channel blocks ride on axis 0."""
    C = 300_000
    x = torch.empty(1, C, 2, 2, device="meta")
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.empty(C, 1, 1, 1, device="meta")
    pw = torch.empty(20_000, 20_000, 1, 1, device="meta")
    xp = torch.empty(1, 20_000, 2, 2, device="meta")
    with _runtime.capture_launches() as calls:
        launchers.depthwise_fwd(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), layout == "cl")
        launchers.depthwise_bwd_input(x, w, x, (1, 1), (0, 0, 0, 0), (1, 1), layout == "cl")
        launchers.depthwise_bwd_weight(x, x, w, (1, 1), (0, 0, 0, 0), (1, 1), True, True)
        launchers.pointwise_bwd_weight(xp, xp, pw, True, True)
    assert len(calls) >= 6
    for rec in calls:
        assert all(g <= 65535 for g in rec.grid[1:]), (rec.kernel.fn.__name__, rec.grid)
        assert rec.grid[0] < 2**31
