"""DepthwiseConv2d / DepthwiseConv1d are drop-ins for nn.Conv2d / nn.Conv1d with groups=C."""
import pytest
import torch
from torch import nn

import triton_dsd
from triton_dsd.testing import assert_close
from helpers import DEVICE, ran


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1, dilation=2),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 0), bias=False),
    dict(kernel_size=3, padding="same", dilation=3),
    dict(kernel_size=3, padding=2, dilation=2, padding_mode="reflect"),
    dict(kernel_size=(2, 3), padding="same", padding_mode="circular"),
    dict(kernel_size=3, padding=1, padding_mode="replicate"),
], ids=["d2", "s2-nobias", "same-d3", "reflect", "circular-same-even", "replicate"])
@pytest.mark.parametrize("mult", [1, 2])
def test_conv2d_dropin(kwargs, mult):
    C = 3
    torch.manual_seed(0)
    ref = nn.Conv2d(C, C * mult, groups=C, **kwargs)
    torch.manual_seed(0)
    ours = triton_dsd.DepthwiseConv2d(C, C * mult, **kwargs)
    # same init (same RNG stream), same names and shapes
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape and torch.equal(p1, p2)
    assert repr(ours).replace("DepthwiseConv2d", "Conv2d") == repr(ref)
    # strict state_dict round trips both ways
    torch.manual_seed(1)
    other = nn.Conv2d(C, C * mult, groups=C, **kwargs)
    ours.load_state_dict(other.state_dict(), strict=True)
    other.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, C, 9, 11)
    expect = other(x)
    ours, x = ours.to(DEVICE), x.to(DEVICE)
    assert_close(ours(x), expect, torch.float32, 9)
    assert ran("depthwise_fwd_kernel")


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=4, stride=2, bias=False),
    dict(kernel_size=3, padding="same", dilation=2, padding_mode="reflect"),
])
def test_conv1d_dropin(kwargs):
    torch.manual_seed(0)
    ref = nn.Conv1d(4, 8, groups=4, **kwargs)
    ours = triton_dsd.DepthwiseConv1d(4, 8, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 4, 17)
    expect = ref(x)
    assert_close(ours.to(DEVICE)(x.to(DEVICE)), expect, torch.float32, 3)
    assert ran("depthwise_fwd_kernel")


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
def test_conv1d_causal(padding_mode):
    """padding='causal': output[t] sees only input[<= t]; equal to left padding then 'valid'."""
    m = triton_dsd.DepthwiseConv1d(3, 3, 3, padding="causal", dilation=2, padding_mode=padding_mode)
    assert "padding=causal" in repr(m)
    x = torch.randn(1, 3, 12)
    ref = nn.Conv1d(3, 3, 3, dilation=2, groups=3)
    ref.load_state_dict(m.state_dict(), strict=True)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    expect = ref(nn.functional.pad(x, (4, 0), mode=mode))
    m = m.to(DEVICE)
    y = m(x.to(DEVICE))
    assert y.shape == x.shape
    assert_close(y, expect, torch.float32, 3)
    # causality: changing the future leaves the past alone
    x2 = x.clone()
    x2[..., 8:] += 1
    assert torch.equal(m(x2.to(DEVICE))[..., :8], y[..., :8])


def test_training_step_matches_nn_conv():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
                        nn.Conv2d(8, 2, 1))
    ours = nn.Sequential(triton_dsd.DepthwiseConv2d(4, 8, 3, padding=2, dilation=2), nn.ReLU(),
                         nn.Conv2d(8, 2, 1))
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours = ours.to(DEVICE)
    x = torch.randn(2, 4, 7, 9, requires_grad=True)
    xd = x.detach().to(DEVICE).requires_grad_()
    ref(x).square().mean().backward()
    ours(xd).square().mean().backward()
    assert_close(xd.grad, x.grad, torch.float32, 2 * 9 * 8)
    assert_close(ours[0].weight.grad, ref[0].weight.grad, torch.float32, 2 * 63)
    assert_close(ours[0].bias.grad, ref[0].bias.grad, torch.float32, 2 * 63)
    assert ran("depthwise_bwd_weight_kernel", "depthwise_bwd_input_kernel")


def test_groups_keyword_accepted_when_depthwise():
    m = triton_dsd.DepthwiseConv2d(4, 8, 3, groups=4)
    assert m.groups == 4
    with pytest.raises(ValueError, match="groups"):
        triton_dsd.DepthwiseConv2d(4, 8, 3, groups=2)
