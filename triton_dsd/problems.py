"""Problems for the tuner, the benchmark, the compile report and the plots: a layer
configuration, its geometry (through ``shapes.py``, so every tool measures the same problem),
the tensors for it, and for each kernel family the launch to time with a given config."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple, Union

import torch

from triton_dsd import cost, keys, launchers, registry, shapes


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
    def padding(self) -> Union[str, int]:
        """The layer's padding argument: 'same' at stride 1, else d*(K-1)//2 on every side.
        Every tool (bench, tune, cost, plots) builds the problem from this one value."""
        return "same" if self.stride == 1 else self.dilation * (self.K - 1) // 2

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
    def height(self) -> int:
        return self.H if self.dim == 2 else 1

    @property
    def pads(self) -> Tuple[int, int, int, int]:
        """(top, bottom, left, right) of :attr:`padding`, as the launchers take them."""
        n = self.dim
        p = shapes.resolve_padding(self.padding, (self.K,) * n, (self.stride,) * n,
                                   (self.dilation,) * n)
        return p if n == 2 else (0, 0) + p

    @property
    def out_hw(self) -> Tuple[int, int]:
        return shapes.out_sizes((self.height, self.W), self.kernel, self.strides, self.pads,
                                self.dilations)

    def cost(self, bias: bool = True) -> cost.LayerCost:
        """Parameters, FLOPs and ideal bytes of this layer (``cost.layer_cost``)."""
        return cost.layer_cost(self.N, self.C, self.M, self.height, self.W, self.kernel,
                               self.dilations, self.strides, depth_multiplier=self.m, bias=bias,
                               dtype_bytes=self.dtype.itemsize, pads=self.pads)

    def step_cost(self, bias: bool = True) -> cost.LayerCost:
        """One decode frame of this layer (causal, 1D) for N streams (``cost.step_cost``)."""
        return cost.step_cost(self.N, self.C, self.M, self.K, self.dilation, self.m, bias,
                              self.dtype.itemsize)

    def cost_of(self, mode: str) -> cost.LayerCost:
        """The cost a benchmark mode measures: a decode frame for 'step', else the layer."""
        return self.step_cost() if mode == "step" else self.cost()

    def tensors(self, gen: torch.Generator = None) -> Dict[str, torch.Tensor]:
        """Random (never zero) tensors of the problem, in its layout, as 4D (1D: (N, C, 1, L))."""
        g = gen or torch.Generator().manual_seed(0)
        kh, kw = self.kernel
        cm = self.C * self.m
        oh, ow = self.out_hw

        def r(*shape, cl=False):
            t = torch.randn(*shape, generator=g).to(self.dtype).to(self.device)
            return t.contiguous(memory_format=torch.channels_last) if cl else t

        cl = self.layout == "cl"
        return dict(x=r(self.N, self.C, self.height, self.W, cl=cl), dw=r(cm, 1, kh, kw),
                    db=r(cm), pw=r(self.M, cm, 1, 1), pb=r(self.M),
                    dz=r(self.N, cm, oh, ow, cl=cl), z=r(self.N, cm, oh, ow, cl=cl),
                    dy=r(self.N, self.M, oh, ow, cl=cl))


Run = Callable[[dict], object]


def tunables(p: Problem) -> List[Tuple[str, Dict[str, object], dict, Run]]:
    """(family, key fields, default config, run(config)) for every kernel family of the layer,
    in registry order."""
    t = p.tensors()
    cl = p.layout == "cl"
    geo = (p.strides, p.pads, p.dilations)
    (oh, ow), cm = p.out_hw, p.C * p.m
    P = p.N * oh * ow if cl else oh * ow
    dims = dict(
        depthwise_fwd=(cm, oh, ow, p.kernel, p.strides, p.dilations, p.m, cl),
        depthwise_bwd_input=(p.C, p.height, p.W, p.kernel, p.strides, p.dilations, p.m, cl),
        depthwise_bwd_weight=(cm, oh, ow, p.kernel, p.strides, p.dilations, p.m, cl),
        pointwise_fwd=(P, p.M, cm, cl),
        pointwise_bwd_weight=(P, p.M, cm, cl),
        dsd_fwd=(cm, p.M, oh, ow, p.kernel, p.strides, p.dilations, p.m, cl),
    )
    runs = dict(
        depthwise_fwd=lambda c: launchers.depthwise_fwd(t["x"], t["dw"], t["db"], *geo, cl, cfg=c),
        depthwise_bwd_input=lambda c: launchers.depthwise_bwd_input(t["dz"], t["dw"], t["x"],
                                                                    *geo, cl, cfg=c),
        depthwise_bwd_weight=lambda c: launchers.depthwise_bwd_weight(
            t["dz"], t["x"], t["dw"], *geo, True, False, cfg=c),
        pointwise_fwd=lambda c: launchers.pointwise_fwd(t["z"], t["pw"], t["pb"], cl, cfg=c),
        pointwise_bwd_weight=lambda c: launchers.pointwise_bwd_weight(
            t["dy"], t["z"], t["pw"], True, False, cfg=c),
        dsd_fwd=lambda c: launchers.dsd_fwd(t["x"], t["dw"], t["db"], t["pw"], t["pb"], *geo, cl,
                                            cfg=c),
    )
    out = []
    for name, fam in registry.FAMILIES.items():
        fields = fam.key(*dims[name])
        out.append((name, fields, fam.default(fields, p.dtype.itemsize), runs[name]))
    return out


def from_key(family: str, key: str, dtype: torch.dtype,
             device: torch.device = torch.device("cpu")) -> Problem:
    """A problem that has the given tuning key (sizes are the key's buckets), for compiling or
    re-timing a stored config."""
    f = keys.parse_key(key)
    if family in ("pointwise_fwd", "pointwise_bwd_weight"):
        P = int(f["P"])
        return Problem(N=1, C=int(f["C"]), M=int(f["M"]), H=1 if P < 64 else 8,
                       W=max(P // 8, 1) if P >= 64 else P, K=1, dim=2, dtype=dtype,
                       layout=f["layout"], device=device)
    kh, kw = keys.ints(f["K"])
    dw = keys.ints(f["d"])[1]
    sw = keys.ints(f["s"])[1]
    oh, ow = keys.ints(f["HW"])
    m = int(f["m"])
    dim = 1 if kh == 1 and oh == 1 else 2
    C = max(int(f["C"]) // (1 if family == "depthwise_bwd_input" else m), 1)
    # input sizes that give (about) the key's output sizes with the problem's padding
    H, W = (oh - 1) * sw + 1, (ow - 1) * sw + 1
    return Problem(N=2, C=C, M=int(f.get("M", 16)), H=H, W=W, K=kw, dilation=dw, stride=sw,
                   m=m, dim=dim, dtype=dtype, layout=f["layout"], device=device)
