"""Problem keys: what the config store indexes a tuned config by.

A key is a dict of fields (sizes bucketed to powers of two, geometry as "AxB" strings, the
layout) and its string form ``"C=128,HW=64x64,K=3x3,..."`` (fields sorted). Default configs and
config spaces are functions of the same fields (``configs.py``), so a key alone describes the
problem a stored config was chosen for.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

from triton_dsd.shapes import layout_name


def bucket(n: int) -> int:
    """Power-of-two bucket of a size (channel counts, pixels): the next power of two >= n."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def _pair(v: Sequence[int]) -> str:
    return f"{v[0]}x{v[1]}"


def depthwise_key(C: int, OH: int, OW: int, K: Sequence[int], stride: Sequence[int],
                  dilation: Sequence[int], mult: int, channels_last: bool) -> Dict[str, object]:
    """The depthwise kernels: C channels of the tiled tensor, the tiled (OH, OW) extent."""
    return dict(layout=layout_name(channels_last), K=_pair(K), d=_pair(dilation), s=_pair(stride),
                C=bucket(C), m=int(mult), HW=f"{bucket(OH)}x{bucket(OW)}")


#: pixel buckets stop here: past a million pixels a GEMM's best tile no longer changes
P_BUCKET_MAX = 1 << 20


def gemm_key(P: int, M: int, K: int, channels_last: bool) -> Dict[str, object]:
    """The pointwise GEMMs: P pixels, M outputs, K reduction channels (bucketed)."""
    return dict(layout=layout_name(channels_last), C=bucket(K), M=bucket(M),
                P=min(bucket(P), P_BUCKET_MAX))


def dsd_key(CM: int, M: int, OH: int, OW: int, K: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int], mult: int, channels_last: bool) -> Dict[str, object]:
    """The fused layer: the depthwise key of its C*m channels plus the output channels M."""
    key = depthwise_key(CM, OH, OW, K, stride, dilation, mult, channels_last)
    key["M"] = bucket(M)
    return key


def make_key(fields: Dict[str, object]) -> str:
    return ",".join(f"{k}={fields[k]}" for k in sorted(fields))


def parse_key(key: str) -> Dict[str, str]:
    out = {}
    for part in key.split(","):
        k, _, v = part.partition("=")
        out[k] = v
    return out


def ints(value: object) -> tuple:
    """"3x3" -> (3, 3); 128 -> (128,)."""
    return tuple(int(v) for v in str(value).split("x"))


def distance(a: Dict[str, str], b: Dict[str, str]) -> float:
    """log2 distance between two problem keys; inf when a categorical field differs."""
    if a.keys() != b.keys():
        return math.inf
    d = 0.0
    for k in a:
        va, vb = str(a[k]), str(b[k])
        if va == vb:
            continue
        try:
            xs, ys = ints(va), ints(vb)
        except ValueError:
            return math.inf  # layout and other categorical fields must match
        if len(xs) != len(ys):
            return math.inf
        d += sum(abs(math.log2(x + 1) - math.log2(y + 1)) for x, y in zip(xs, ys))
    return d
