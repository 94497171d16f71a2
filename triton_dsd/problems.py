"""Problems for the tuner, the benchmark and the compile report: a layer configuration, the
tensors for it, and for each kernel family the launch to time with a given config."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple

import torch

from triton_dsd import launch


@dataclasses.dataclass(frozen=True)
class Problem:
    """One separable layer: x (N, C, H, W) [1D: H = 1], C*m depthwise channels, M outputs."""
    N: int
    C: int
    M: int
    H: int
    W: int
    K: int
    dilation: int = 1
    stride: int = 1
    m: int = 1
    dim: int = 2
    dtype: torch.dtype = torch.bfloat16
    layout: str = "cl"  # "cl" (channels_last / channel-last 1D) or "nchw"
    device: torch.device = torch.device("cpu")

    def label(self) -> str:
        sp = f"{self.H}x{self.W}" if self.dim == 2 else f"L{self.W}"
        return (f"{self.dim}D N{self.N} C{self.C} M{self.M} {sp} K{self.K} d{self.dilation} "
                f"s{self.stride} m{self.m} {str(self.dtype).replace('torch.', '')} {self.layout}")

    @property
    def kernel(self) -> Tuple[int, int]:
        return (self.K, self.K) if self.dim == 2 else (1, self.K)

    @property
    def strides(self) -> Tuple[int, int]:
        return (self.stride, self.stride) if self.dim == 2 else (1, self.stride)

    @property
    def dilations(self) -> Tuple[int, int]:
        return (self.dilation, self.dilation) if self.dim == 2 else (1, self.dilation)

    @property
    def pads(self) -> Tuple[int, int, int, int]:
        """'same'-style padding (floor on the low side) for stride 1; symmetric otherwise."""
        kh, kw = self.kernel
        dh, dw = self.dilations
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)

    @property
    def out_hw(self) -> Tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), p = self.kernel, self.strides, self.dilations, self.pads
        H = 1 if self.dim == 1 else self.H
        return launch.out_hw((H, self.W), (kh, kw), (sh, sw), p, (dh, dw))

    def tensors(self, gen: torch.Generator = None) -> Dict[str, torch.Tensor]:
        """Random (never zero) tensors of the problem, in its layout, as 4D (1D: (N, C, 1, L))."""
        g = gen or torch.Generator().manual_seed(0)
        H = 1 if self.dim == 1 else self.H
        kh, kw = self.kernel
        cm = self.C * self.m
        oh, ow = self.out_hw

        def r(*shape, cl=False):
            t = torch.randn(*shape, generator=g).to(self.dtype).to(self.device)
            return t.contiguous(memory_format=torch.channels_last) if cl else t

        cl = self.layout == "cl"
        return dict(x=r(self.N, self.C, H, self.W, cl=cl), dw=r(cm, 1, kh, kw), db=r(cm),
                    pw=r(self.M, cm, 1, 1), pb=r(self.M), dz=r(self.N, cm, oh, ow, cl=cl),
                    z=r(self.N, cm, oh, ow, cl=cl), dy=r(self.N, self.M, oh, ow, cl=cl))


Run = Callable[[dict], object]


def tunables(p: Problem) -> List[Tuple[str, Dict[str, object], dict, Run]]:
    """(family, key fields, default config, run(config)) for every kernel family of the layer."""
    t = p.tensors()
    cl = p.layout == "cl"
    geo = (p.strides, p.pads, p.dilations)
    (oh, ow), cm = p.out_hw, p.C * p.m
    H = 1 if p.dim == 1 else p.H
    P = p.N * oh * ow if cl else oh * ow
    out = []

    def add(family, fields, default, run):
        out.append((family, fields, default, run))

    dkey = launch.depthwise_key
    add("depthwise_fwd", dkey(cm, oh, ow, p.kernel, p.strides, p.dilations, p.m, cl),
        launch.depthwise_config(cm, oh, ow, cl),
        lambda c: launch.depthwise_fwd(t["x"], t["dw"], t["db"], *geo, cl, cfg=c))
    add("depthwise_bwd_input", dkey(p.C, H, p.W, p.kernel, p.strides, p.dilations, p.m, cl),
        launch.depthwise_config(p.C, H, p.W, cl),
        lambda c: launch.depthwise_bwd_input(t["dz"], t["dw"], t["x"], *geo, cl, cfg=c))
    add("depthwise_bwd_weight", dkey(cm, oh, ow, p.kernel, p.strides, p.dilations, p.m, cl),
        launch.depthwise_config(cm, oh, ow, cl),
        lambda c: launch.depthwise_bwd_weight(t["dz"], t["x"], t["dw"], *geo, True, False, cfg=c))
    add("pointwise_fwd", launch.gemm_key(P, p.M, cm, cl),
        launch.pointwise_config(P, p.M, cm, p.dtype.itemsize),
        lambda c: launch.pointwise_fwd(t["z"], t["pw"], t["pb"], cl, cfg=c))
    add("pointwise_bwd_weight", launch.gemm_key(P, p.M, cm, cl),
        launch.pointwise_bwd_weight_config(P, p.M, cm),
        lambda c: launch.pointwise_bwd_weight(t["dy"], t["z"], t["pw"], True, False, cfg=c))
    add("dsd_fwd", launch.dsd_key(cm, p.M, oh, ow, p.kernel, p.strides, p.dilations, p.m, cl),
        launch.fused_config(oh * ow, p.M, cm),
        lambda c: launch.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl, cfg=c))
    return out


def from_key(family: str, key: str, dtype: torch.dtype,
             device: torch.device = torch.device("cpu")) -> Problem:
    """A problem that has the given tuning key (sizes are the key's buckets), for compiling or
    re-timing a stored config."""
    from triton_dsd.tuning import parse_key
    f = parse_key(key)
    cl = f["layout"] == "cl"
    if family in ("pointwise_fwd", "pointwise_bwd_weight"):
        P = int(f["P"])
        return Problem(N=1, C=int(f["C"]), M=int(f["M"]), H=1 if P < 64 else 8,
                       W=max(P // 8, 1) if P >= 64 else P, K=1, dim=2, dtype=dtype,
                       layout=f["layout"], device=device)
    kh, kw = (int(v) for v in f["K"].split("x"))
    dh, dw = (int(v) for v in f["d"].split("x"))
    sh, sw = (int(v) for v in f["s"].split("x"))
    oh, ow = (int(v) for v in f["HW"].split("x"))
    m = int(f["m"])
    dim = 1 if kh == 1 and oh == 1 else 2
    C = max(int(f["C"]) // (1 if family == "depthwise_bwd_input" else m), 1)
    # input sizes that give (about) the key's output sizes with 'same'-style padding
    H, W = (oh - 1) * sh + 1, (ow - 1) * sw + 1
    return Problem(N=2, C=C, M=int(f.get("M", 16)), H=H, W=W, K=kw, dilation=dw, stride=sw,
                   m=m, dim=dim, dtype=dtype, layout="cl" if cl else "nchw", device=device)
