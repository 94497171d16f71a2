"""The layer users swap in: separable layers vs the eager class, convert, torch.compile,
opcheck, autocast, DDP, and two real model blocks (ConvNeXt, WaveNet/TCN)."""
import copy
import socket

import pytest
import torch
from torch import nn

import triton_dsd
from triton_dsd import _runtime
from triton_dsd.testing import assert_close
from helpers import DEVICE, ran


class ArticleDSD(nn.Module):
    """The source article's class, as published (its baseline)."""

    def __init__(self, in_channels, out_channels, kernel_size, dilation=1, padding=0):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding,
                                   dilation=dilation, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


ArticleDSD.__name__ = "DepthwiseSeparableDilatedConv2d"


@pytest.mark.parametrize("padding,shape", [(0, (1, 64, 6, 6)), ("same", (1, 64, 10, 10))])
def test_article_example(padding, shape):
    """Input 1x3x10x10, 64 outputs, 3x3, dilation 2: (1, 64, 6, 6) with the article's default
    padding 0 (its printed (1, 64, 10, 10) is wrong), (1, 64, 10, 10) with 'same'."""
    torch.manual_seed(0)
    article = ArticleDSD(3, 64, 3, 2, padding)
    ours = triton_dsd.DepthwiseSeparableDilatedConv2d(3, 64, 3, 2, padding)  # positional, as the article
    ours.load_state_dict(article.state_dict(), strict=True)
    x = torch.randn(1, 3, 10, 10)
    expect = article(x)
    y = ours.to(DEVICE)(x.to(DEVICE))
    assert y.shape == expect.shape == shape
    assert_close(y, expect, torch.float32, 27)
    assert _runtime.LAUNCHES["dsd_fwd_kernel"] == 1
    converted, report = triton_dsd.convert(article, return_report=True)
    assert isinstance(converted, triton_dsd.DepthwiseSeparableDilatedConv2d)
    assert [r.old for r in report] == ["DepthwiseSeparableDilatedConv2d"]
    assert_close(converted.to(DEVICE)(x.to(DEVICE)), expect, torch.float32, 27)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, dilation=2, padding=2),
    dict(kernel_size=3, dilation=1, padding=1, stride=2, depth_multiplier=2, bias=False),
    dict(kernel_size=2, dilation=3, padding="same", padding_mode="reflect", fused=False),
], ids=["d2", "s2-m2-nobias", "same-reflect-unfused"])
def test_separable_vs_eager_class(dim, kw):
    cls = triton_dsd.DepthwiseSeparableDilatedConv2d if dim == 2 else triton_dsd.DepthwiseSeparableDilatedConv1d
    eager_cls = (triton_dsd.EagerDepthwiseSeparableDilatedConv2d if dim == 2
                 else triton_dsd.EagerDepthwiseSeparableDilatedConv1d)
    eager_kw = {k: v for k, v in kw.items() if k != "fused"}  # the eager class has no `fused`
    torch.manual_seed(0)
    eager = eager_cls(4, 6, **eager_kw)
    torch.manual_seed(0)
    ours = cls(4, 6, **kw)
    assert list(ours.state_dict()) == list(eager.state_dict())
    for (k, a), b in zip(ours.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), k  # same init as nn.Conv
    eager2 = eager_cls(4, 6, **eager_kw)
    eager2.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(eager2.state_dict(), strict=True)
    assert "fused=" in repr(ours)
    x = torch.randn(2, 4, *((9, 11) if dim == 2 else (17,)), requires_grad=True)
    xd = x.detach().to(DEVICE).requires_grad_()
    expect = eager2(x)
    ours = ours.to(DEVICE)
    y = ours(xd)
    assert_close(y, expect, torch.float32, 36)
    expect.square().sum().backward()
    y.square().sum().backward()
    assert_close(xd.grad, x.grad, torch.float32, 36)
    for (n, p), q in zip(ours.named_parameters(), eager2.parameters()):
        assert_close(p.grad, q.grad, torch.float32, 200, n)


def test_causal_separable_matches_eager_class():
    torch.manual_seed(0)
    eager = triton_dsd.EagerDepthwiseSeparableDilatedConv1d(4, 5, 3, 4, "causal")
    ours = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 5, 3, 4, "causal")
    ours.load_state_dict(eager.state_dict(), strict=True)
    x = torch.randn(2, 4, 19)
    y = ours.to(DEVICE)(x.to(DEVICE))
    assert y.shape == (2, 5, 19)
    assert_close(y, eager(x), torch.float32, 12)


# ----------------------------------------------------------------------------- real blocks
class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class TCN(nn.Module):
    """WaveNet/TCN-style: causal dilated separable convs, dilations 1, 2, 4, 8, residuals, plus
    a (depthwise, 1x1) pair inside a Sequential head."""

    def __init__(self, c):
        super().__init__()
        self.blocks = nn.ModuleList(
            triton_dsd.EagerDepthwiseSeparableDilatedConv1d(c, c, 3, d, "causal") for d in (1, 2, 4, 8))
        self.head = nn.Sequential(nn.Conv1d(c, 2 * c, 3, padding=1, groups=c), nn.Conv1d(2 * c, 3, 1),
                                  nn.ReLU())

    def forward(self, x):
        for blk in self.blocks:
            x = x + torch.tanh(blk(x))
        return self.head(x)


def _same_training(model, make_input, target_shape, steps=5, tol=1e-4):
    torch.manual_seed(1)
    eager = copy.deepcopy(model)
    conv, report = triton_dsd.convert(model, return_report=True)
    conv = conv.to(DEVICE)
    x = make_input()
    t = torch.randn(target_shape)
    # equal outputs and gradients
    xe = x.clone().requires_grad_()
    xc = x.to(DEVICE).requires_grad_()
    ye, yc = eager(xe), conv(xc)
    assert_close(yc, ye, torch.float32, 400)
    ye.square().sum().backward()
    yc.square().sum().backward()
    assert_close(xc.grad, xe.grad, torch.float32, 400, "dx")
    for (n, p), q in zip(conv.named_parameters(), eager.parameters()):
        assert_close(p.grad, q.grad, torch.float32, 400, n)
    # five SGD steps give the same losses
    losses = []
    for m, inp, tgt in ((eager, x, t), (conv, x.to(DEVICE), t.to(DEVICE))):
        m.zero_grad()
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        run = []
        for _ in range(steps):
            opt.zero_grad()
            loss = (m(inp) - tgt).square().mean()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    for a, b in zip(*losses):
        assert abs(a - b) <= tol * max(1.0, abs(a)), losses
    return report


def test_convnext_block_convert():
    torch.manual_seed(0)
    report = _same_training(ConvNeXtBlock(8), lambda: torch.randn(2, 8, 9, 9), (2, 8, 9, 9))
    assert [(r.name, r.old, r.new) for r in report if r.replaced] == [
        ("dwconv", "Conv2d", "DepthwiseConv2d")]
    left = [r.note for r in report if not r.replaced]  # the permute before the LayerNorm
    assert left and "goes to call_method permute" in left[0], left
    assert ran("depthwise_fwd_kernel", "depthwise_bwd_weight_kernel")


def test_tcn_stack_convert():
    torch.manual_seed(0)
    report = _same_training(TCN(6), lambda: torch.randn(2, 6, 20), (2, 3, 20))
    names = sorted((r.name, r.new) for r in report)
    # the head's depthwise -> 1x1 -> ReLU is one fused chain (ReLU in the epilogue)
    assert names == [("blocks.0", "DepthwiseSeparableDilatedConv1d"),
                     ("blocks.1", "DepthwiseSeparableDilatedConv1d"),
                     ("blocks.2", "DepthwiseSeparableDilatedConv1d"),
                     ("blocks.3", "DepthwiseSeparableDilatedConv1d"),
                     ("head.0", "SeparableChain"), ("head.1", "Bypassed"),
                     ("head.2", "Bypassed")]
    assert ran("dsd_fwd_kernel")


def test_to_eager_undoes_convert():
    torch.manual_seed(0)
    model = TCN(4)
    conv = triton_dsd.convert(model)
    back, report = triton_dsd.to_eager(conv, return_report=True)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert list(back.state_dict()) == list(model.state_dict())
    x = torch.randn(1, 4, 12)
    assert torch.equal(back(x), model(x))
    # 4 separable blocks; the head's chain (depthwise, 1x1, ReLU)
    assert len(report) == 7, [str(r) for r in report]


def test_convert_keeps_parameters_for_existing_optimizers():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    params = list(model.parameters())
    conv = triton_dsd.convert(model, inplace=True)
    assert conv is model and [id(p) for p in conv.parameters()] == [id(p) for p in params]


# ----------------------------------------------------------------------------- compile, opcheck
@pytest.mark.parametrize("fused", [True, False])
def test_torch_compile_fullgraph(fused):
    torch.manual_seed(0)
    model = nn.Sequential(
        triton_dsd.DepthwiseSeparableDilatedConv2d(3, 5, 3, 2, "same", fused=fused), nn.ReLU(),
        triton_dsd.DepthwiseConv2d(5, 5, 3, padding=1)).to(DEVICE)
    x = torch.randn(2, 3, 7, 8, device=DEVICE, requires_grad=True)
    expect = model(x)
    expect.sum().backward()
    g_expect = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x2 = x.detach().clone().requires_grad_()
    y = compiled(x2)
    y.sum().backward()
    assert_close(y, expect.detach().double(), torch.float32, 30)
    for p, g in zip(model.parameters(), g_expect):
        assert_close(p.grad, g.double(), torch.float32, 200)
    assert ran("dsd_fwd_kernel" if fused else "pointwise_fwd_kernel")


def test_torch_compile_1d_causal():
    torch.manual_seed(0)
    layer = triton_dsd.DepthwiseSeparableDilatedConv1d(4, 4, 3, 2, "causal").to(DEVICE)
    x = torch.randn(2, 4, 10, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True,
                             backend="inductor" if DEVICE == "cuda" else "aot_eager")
    assert_close(compiled(x), layer(x).double(), torch.float32, 12)


def _op_samples():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    x, w, b = r(2, 3, 6, 7), r(6, 1, 3, 2), r(6)
    geo = ([1, 2], [1, 1, 0, 1], [2, 1])
    y = torch.ops.triton_dsd.depthwise_fwd(x, w, b, *geo, False)
    pw, pb = r(5, 6, 1, 1), r(5)
    ops = torch.ops.triton_dsd
    return [
        (ops.depthwise_fwd, (x.requires_grad_(), w.requires_grad_(), b, *geo, False)),
        (ops.depthwise_fwd, (x.detach().contiguous(memory_format=torch.channels_last), w.detach(), None, *geo, True)),
        (ops.depthwise_bwd_input, (torch.randn_like(y), w.detach(), x.detach(), *geo)),
        (ops.depthwise_bwd_weight, (torch.randn_like(y), x.detach(), w.detach(), *geo, True, True)),
        (ops.pointwise_fwd, (y.detach().requires_grad_(), pw.requires_grad_(), pb.requires_grad_(), False)),
        (ops.pointwise_bwd_input, (r(2, 5, 6, 4), pw.detach(), y.detach())),
        (ops.pointwise_bwd_weight, (r(2, 5, 6, 4), y.detach(), pw.detach(), True, False)),
        (ops.dsd_fwd, (x.detach().requires_grad_(), w.detach().requires_grad_(), b.detach(), pw.detach().requires_grad_(),
                       pb.detach(), *geo, True)),
    ]


@pytest.mark.parametrize("i", range(8))
def test_opcheck(i):
    op, args = _op_samples()[i]
    torch.library.opcheck(op, args)


# ----------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("fused", [True, False])
def test_autocast_matches_nn_conv(fused):
    dev = DEVICE
    torch.manual_seed(0)
    eager = triton_dsd.EagerDepthwiseSeparableDilatedConv2d(4, 6, 3, 2, 2).to(dev)
    ours = triton_dsd.DepthwiseSeparableDilatedConv2d(4, 6, 3, 2, 2, fused=fused).to(dev)
    ours.load_state_dict(eager.state_dict())
    x = torch.randn(2, 4, 8, 8, device=dev)
    with torch.autocast(dev, dtype=torch.bfloat16):
        ye = eager(x)
        y = ours(x)
        ya = torch.relu(ours(x))  # an op after: autocast still applies downstream
    assert ye.dtype == y.dtype == ya.dtype == torch.bfloat16
    assert_close(y, ye.double(), torch.bfloat16, 36)
    assert _runtime.LAUNCHES["dsd_fwd_kernel" if fused else "pointwise_fwd_kernel"] >= 1
    y.float().sum().backward()  # gradients flow to the fp32 parameters through the casts
    assert ours.depthwise.weight.grad.dtype == torch.float32


# ----------------------------------------------------------------------------- DDP
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU script runs its own checks")
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp
    import ddp_worker
    out = str(tmp_path / "ddp.pt")
    mp.spawn(ddp_worker.worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp_state = torch.load(out)
    single = ddp_worker.make_model()
    x, t = ddp_worker.batch()
    ddp_worker.train(single, x, t)
    for k, v in single.state_dict().items():
        assert_close(ddp_state[k], v.double(), torch.float32, 100, k)
