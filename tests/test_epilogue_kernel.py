"""The fused forward's epilogues, kernel level: ``launchers.dsd_fwd(..., epilogue=...)``
against the float64 eager chain dw -> scale/shift -> act -> (rounded to the input dtype) ->
pw -> scale/shift -> act, on every code path of ``dsd_fwd_kernel`` (register windows,
pixel-major tile, channel-major tile, z recomputed per M block; 2D and 1D).

Each case also proves it can fail: the reference with the epilogue differs from the
reference with either side dropped by more than twice the tolerance (so a kernel that dropped
it fails the comparison), and the launch is counted and inspected (the path it took, the
epilogue flags it got)."""
import pytest
import torch
import torch.nn.functional as F

from triton_dsd import _runtime, launchers, shapes
from triton_dsd.epilogue import ACTIVATIONS, Epilogue, apply
from triton_dsd.testing import assert_close, reference, tolerance
from helpers import DEVICE, case_id, pairwise, with_layout

ACTS = list(ACTIVATIONS)  # identity, relu, relu6, silu, gelu, gelu_tanh, hardswish
#: each activation on each side, paired (not multiplied out): mid ACTS[i] with out ACTS[i+3]
ACT_PAIRS = [(a, ACTS[(i + 3) % len(ACTS)]) for i, a in enumerate(ACTS)]
#: an upper bound of |act'| over the reals (hardswish: 1.5 at v = 3): errors grow at most so
LIPSCHITZ = 1.5

#: the kernel paths: input geometry, an explicit config (tiny interpreter grids: 1-4
#: programs) and what the launch must show. C*m = 8 / 6 / 40; M = 20 (two M blocks of 16)
PATHS = {
    # channels_last, KW <= 5: register windows of 4 outputs (BLOCK_P / 4 = 16 rows)
    "win4-2d-cl": dict(dim=2, layout="cl", C=4, m=2, K=3, d=2, stride=1, pad="same",
                       size=(4, 9), cfg=dict(BLOCK_P=64, BLOCK_M=16, BLOCK_K=64),
                       expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=4)),
    # 1D channel-last (N, C, 1, L): windows of 2 (BLOCK_P / 2 = 16 rows)
    "win2-1d-cl": dict(dim=1, layout="cl", C=4, m=2, K=5, d=1, stride=1, pad="causal",
                       size=(13,), cfg=dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=64),
                       expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=2)),
    # a 16-bit 1D row of more than ROW_LOOP_TAPS taps at dilation 1: windows of 2 that loop
    # over the row's tap groups (8 groups of 4, then 3 taps unrolled)
    "win2-1d-cl-k35": dict(dim=1, layout="cl", C=4, m=2, K=35, d=1, stride=1, pad="causal",
                           size=(40,), cfg=dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=64),
                           expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=2)),
    # NCHW: the z tile built [channel x pixel], y^T = wp @ z^T
    "pixmajor-2d-nchw": dict(dim=2, layout="nchw", C=3, m=2, K=3, d=1, stride=2, pad=1,
                             size=(7, 9), cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=16),
                             expect=dict(Z_STATIONARY=True, PIX_MAJOR=True, WIN=1)),
    # 1D NCL (N, C, 1, L): pixel-major too
    "pixmajor-1d-ncl": dict(dim=1, layout="nchw", C=3, m=2, K=3, d=2, stride=1, pad="same",
                            size=(11,), cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=16),
                            expect=dict(Z_STATIONARY=True, PIX_MAJOR=True, WIN=1)),
    # channels_last with a z_j too thin for a window (8 rows): the [pixel x channel] tile
    "tile-2d-cl": dict(dim=2, layout="cl", C=4, m=2, K=3, d=1, stride=1, pad="same",
                       size=(3, 5), cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=16),
                       expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=1)),
    # C*m = 40 > BLOCK_K = 16: z recomputed chunk by chunk (16 + 16 + 8) per M block
    "recompute-2d-nchw": dict(dim=2, layout="nchw", C=20, m=2, K=3, d=1, stride=1, pad=1,
                              size=(3, 5), cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=16),
                              expect=dict(Z_STATIONARY=False, PIX_MAJOR=False, WIN=1)),
}
M_OUT = 20
DTYPES = [torch.float32, torch.float16, torch.float64]  # bf16: wrong in the interpreter


def _windowed(path: str) -> bool:
    return PATHS[path]["expect"]["WIN"] > 1


#: every path x dtype, affine on/off on both sides, pairwise; the activation pairs dealt out
#: in turn, path by path (each activation on each side at least twice, each path a few
#: different ones). fp64 never takes the windows (``launchers.dsd_window``: fp64 words take
#: two registers)
CASES = [dict(c, acts=ACT_PAIRS[i % len(ACT_PAIRS)]) for i, c in enumerate(sorted(pairwise(
    dict(path=list(PATHS), dtype=DTYPES, mid_affine=[True, False], out_affine=[True, False]),
    valid=lambda c: not (c["dtype"] == torch.float64 and _windowed(c["path"])) and not (
        c["path"] == "win2-1d-cl-k35" and c["dtype"] != torch.float16), seed=3),
    key=lambda c: list(PATHS).index(c["path"])))]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _problem(path, dtype, N=2, seed=0, bias_offset=0.0):
    """x (in its layout, 4D: 1D as (N, C, 1, L)), the four parameters, geometry; ``path`` a
    name of PATHS or a dict like its entries. bias_offset: added to the depthwise bias (a mean
    over the channels of a pixel far from zero, for the layer norm)."""
    p = PATHS[path] if isinstance(path, str) else path
    g = torch.Generator().manual_seed(seed)
    C, CM, K = p["C"], p["C"] * p["m"], p["K"]
    ks = (K, K) if p["dim"] == 2 else (1, K)

    def r(*shape, fan_in=1):  # unit-scale activations: u, v and y about N(0, 1)
        t = torch.randn(*shape, generator=g, dtype=torch.float64) / fan_in ** 0.5
        return t.to(dtype)

    x = r(N, C, *p["size"])
    x = with_layout(x, p["layout"])
    if p["dim"] == 1:
        x = x.unsqueeze(2)  # (N, C, 1, L), the functional API's view
    params = (r(CM, 1, *ks, fan_in=K ** p["dim"]), (r(CM).double() + bias_offset).to(dtype),
              r(M_OUT, CM, 1, 1, fan_in=CM), r(M_OUT))
    dil = (1, p["d"]) if p["dim"] == 1 else (p["d"], p["d"])
    st = (1, p["stride"]) if p["dim"] == 1 else (p["stride"], p["stride"])
    if p["pad"] == "causal":
        pads = (0, 0, p["d"] * (K - 1), 0)
    elif isinstance(p["pad"], str):
        pads = shapes.resolve_padding(p["pad"], ks, st, dil)
    else:
        pads = (0, 0, p["pad"], p["pad"]) if p["dim"] == 1 else (p["pad"],) * 4
    return g, x.to(DEVICE), [t.to(DEVICE) for t in params], st, pads, dil


def _epilogue(g, CM, M, dtype, acts, mid_affine, out_affine):
    """Scales of both signs around 1 (a folded batch norm's gamma may be negative), shifts of
    about the activations' kinks, in the accumulator dtype."""
    acc = _acc(dtype)

    def pair(n):
        s = (torch.rand(n, generator=g, dtype=torch.float64) + 0.5) * torch.where(
            torch.rand(n, generator=g) < 0.25, -1.0, 1.0).double()
        return s.to(acc).to(DEVICE), (2 * torch.randn(n, generator=g, dtype=torch.float64)).to(
            acc).to(DEVICE)

    ms, mt = pair(CM) if mid_affine else (None, None)
    os_, ot = pair(M) if out_affine else (None, None)
    return Epilogue(ms, mt, ACTIVATIONS[acts[0]], os_, ot, ACTIVATIONS[acts[1]])


def _eager(x, wd, bd, wp, bp, st, pads, dil, epi, dtype, absolute=False):
    """The float64 eager chain; v rounded to ``dtype`` between the stages as the kernel feeds
    it to tl.dot. absolute: instead, a bound of the kernel's rounding error scale (the chain
    on |values|, each activation replaced by LIPSCHITZ x its argument)."""
    pt, pb_, pl, pr = pads
    xp = F.pad(x, (pl, pr, pt, pb_))
    C = x.shape[1]
    r64 = lambda t: None if t is None else t.to("cpu", torch.float64)  # noqa: E731
    if absolute:
        ab = lambda t: None if t is None else t.abs()  # noqa: E731
        v = F.conv2d(xp.abs(), wd.abs(), bd.abs(), st, 0, dil, groups=C)
        if epi.mid_scale is not None:
            v = apply(v, ab(r64(epi.mid_scale)), ab(r64(epi.mid_shift)), 0)
        v = v * (LIPSCHITZ if epi.mid_act else 1.0)
        y = F.conv2d(v, wp.abs(), bp.abs())
        if epi.out_scale is not None:
            y = apply(y, ab(r64(epi.out_scale)), ab(r64(epi.out_shift)), 0)
        return y * (LIPSCHITZ if epi.out_act else 1.0)
    u = F.conv2d(xp, wd, bd, st, 0, dil, groups=C)
    v = apply(u, r64(epi.mid_scale), r64(epi.mid_shift), epi.mid_act)
    v = v.to(dtype).double()
    return apply(F.conv2d(v, wp, bp), r64(epi.out_scale), r64(epi.out_shift), epi.out_act)


def _run(path, x, params, st, pads, dil, epi):
    _runtime.LAUNCHES.clear()
    p = PATHS[path]
    y = launchers.dsd_fwd(x, *params, st, pads, dil, p["layout"] == "cl",
                          cfg=dict(p["cfg"], num_warps=4, num_stages=2), epilogue=epi)
    assert dict(_runtime.LAUNCHES) == {"dsd_fwd_kernel": 1}, dict(_runtime.LAUNCHES)
    return y


@pytest.mark.portable
# sigmoid's exp(-v) overflows to inf (sigmoid 0, as meant) for v below about -88 (fp32)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_epilogue_matches_eager(case, launch_log):
    path, dtype = case["path"], case["dtype"]
    p = PATHS[path]
    g, x, params, st, pads, dil = _problem(path, dtype, seed=len(case_id(case)))
    CM = p["C"] * p["m"]
    epi = _epilogue(g, CM, M_OUT, dtype, case["acts"], case["mid_affine"], case["out_affine"])
    y = _run(path, x, params, st, pads, dil, epi)

    # the path this case is about, and the epilogue flags the kernel got
    (name, kw, _), = launch_log
    assert {k: kw[k] for k in p["expect"]} == p["expect"], (path, kw)
    assert (kw["HAS_MID_AFFINE"], kw["MID_ACT"], kw["HAS_OUT_AFFINE"], kw["OUT_ACT"]) == (
        case["mid_affine"], epi.mid_act, case["out_affine"], epi.out_act)

    xr, pr = reference(x), [reference(t) for t in params]
    yr = _eager(xr, *pr, st, pads, dil, epi, dtype)
    mag = _eager(xr, *pr, st, pads, dil, epi, dtype, absolute=True)
    taps = p["K"] ** p["dim"]
    n_red = CM * taps
    assert_close(y, yr, dtype, n_red, "y", magnitude=mag)

    # the test can fail: dropping either epilogue moves y by more than twice the tolerance
    tol = tolerance(dtype, n_red) * float(mag.abs().max())
    for side, on, dropped in (
            ("mid", epi.has_mid, epi._replace(mid_scale=None, mid_shift=None, mid_act=0)),
            ("out", epi.has_out, epi._replace(out_scale=None, out_shift=None, out_act=0))):
        if not on:
            continue  # that side is the identity already
        gap = float((_eager(xr, *pr, st, pads, dil, dropped, dtype) - yr).abs().max())
        # a kernel that dropped it is off by >= gap - (its own error <= tol) > tol: it fails
        assert gap > 3 * tol, f"dropping the {side} epilogue moves y by only {gap:.2e}"


@pytest.mark.portable
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("acts", ACT_PAIRS, ids=lambda a: "-".join(a))
def test_activations_in_float64(acts):
    """Each activation's formula on each side, to float64's tolerance (the grid above meets
    some only in float16, whose tolerance cannot tell gelu's erf from a near miss); inputs
    spread over the kinks (0, +-3, 6) by the shifts."""
    dtype = torch.float64
    p = PATHS["tile-2d-cl"]
    g, x, params, st, pads, dil = _problem("tile-2d-cl", dtype, seed=ACTS.index(acts[0]))
    CM = p["C"] * p["m"]
    epi = _epilogue(g, CM, M_OUT, dtype, acts, True, True)
    y = _run("tile-2d-cl", x, params, st, pads, dil, epi)
    xr, pr = reference(x), [reference(t) for t in params]
    yr = _eager(xr, *pr, st, pads, dil, epi, dtype)
    mag = _eager(xr, *pr, st, pads, dil, epi, dtype, absolute=True)
    assert_close(y, yr, dtype, CM * 9, "y", magnitude=mag)


@pytest.mark.portable
def test_missing_shift_is_zero_and_identity_epilogue_is_plain(launch_log):
    """A scale without its shift is a shift of zero; Epilogue() (all identity) launches the
    plain kernel (every flag off) and equals epilogue=None bit for bit."""
    dtype = torch.float32
    p = PATHS["tile-2d-cl"]
    g, x, params, st, pads, dil = _problem("tile-2d-cl", dtype)
    CM = p["C"] * p["m"]
    scale = (torch.rand(CM, generator=g, dtype=torch.float32) + 0.5).to(DEVICE)
    epi = Epilogue(mid_scale=scale, mid_act=ACTIVATIONS["relu"], out_act=ACTIVATIONS["silu"])
    y = _run("tile-2d-cl", x, params, st, pads, dil, epi)
    xr, pr = reference(x), [reference(t) for t in params]
    ref_epi = epi._replace(mid_shift=torch.zeros(CM, dtype=torch.float32))
    yr = _eager(xr, *pr, st, pads, dil, ref_epi, dtype)
    mag = _eager(xr, *pr, st, pads, dil, ref_epi, dtype, absolute=True)
    assert_close(y, yr, dtype, CM * 9, "y", magnitude=mag)

    plain = _run("tile-2d-cl", x, params, st, pads, dil, None)
    ident = _run("tile-2d-cl", x, params, st, pads, dil, Epilogue())
    flags = ("HAS_MID_AFFINE", "MID_ACT", "HAS_OUT_AFFINE", "OUT_ACT")
    assert [tuple(kw[f] for f in flags) for _, kw, _ in launch_log] == [
        (True, ACTIVATIONS["relu"], False, ACTIVATIONS["silu"]), (False, 0, False, 0),
        (False, 0, False, 0)]
    assert torch.equal(plain, ident)
    assert not torch.isnan(plain).any()


def test_bad_epilogue_vectors_are_refused():
    """A shift without a scale, or a vector of the wrong length, is an error before launch."""
    _, x, params, st, pads, dil = _problem("tile-2d-cl", torch.float32)
    v8, v20 = torch.ones(8), torch.ones(20)
    bad = [Epilogue(mid_shift=v8), Epilogue(out_scale=v8, out_shift=v8),
           Epilogue(mid_scale=v20, mid_shift=v20), Epilogue(out_scale=v20, out_shift=v8)]
    for epi in bad:
        with pytest.raises(ValueError, match="epilogue"):
            launchers.dsd_fwd(x, *params, st, pads, dil, True, epilogue=epi)
    assert not _runtime.LAUNCHES["dsd_fwd_kernel"]


def test_cases_cover_every_option():
    """Each activation on each side, affine on and off on each side, each path and dtype."""
    seen = lambda key: {c[key] for c in CASES}  # noqa: E731
    assert {c["acts"][0] for c in CASES} == set(ACTS) == {c["acts"][1] for c in CASES}
    assert seen("mid_affine") == seen("out_affine") == {True, False}
    assert seen("path") == set(PATHS) and seen("dtype") == set(DTYPES)
    for path in PATHS:  # every path meets each part of both epilogues
        mine = [c for c in CASES if c["path"] == path]
        assert any(c["mid_affine"] for c in mine) and any(c["out_affine"] for c in mine), path
        assert any(c["acts"][0] != "identity" for c in mine), path
        assert any(c["acts"][1] != "identity" for c in mine), path
    assert len(CASES) <= 24, len(CASES)  # the interpreter's budget


# ----------------------------------------------------------------------------- layer norm
#: the z-stationary paths with a layer norm over the C*m channels between the stages
#: (ConvNeXt): C*m not a power of two (6, 20), so padded channel lanes are in every tile.
#: M = 20 (two M blocks of 16)
NORM_PATHS = {
    # channels_last K3: register windows of 4 (BLOCK_P / 4 = 16 rows), 58 padded lanes
    "win4-2d-cl": dict(dim=2, layout="cl", C=3, m=2, K=3, d=2, stride=1, pad="same",
                       size=(4, 9), cfg=dict(BLOCK_P=64, BLOCK_M=16, BLOCK_K=64),
                       expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=4)),
    # channels_last K7 (KW > DSD_WINDOW_MAX_KW): the [pixel x channel] tile, ConvNeXt's
    "tile-k7-cl": dict(dim=2, layout="cl", C=10, m=2, K=7, d=1, stride=1, pad="same",
                       size=(5, 6), cfg=dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=32),
                       expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=1)),
    # NCHW K7: the tile built [channel x pixel]
    "pixmajor-k7-nchw": dict(dim=2, layout="nchw", C=3, m=2, K=7, d=1, stride=1, pad=3,
                             size=(6, 5), cfg=dict(BLOCK_P=32, BLOCK_M=16, BLOCK_K=16),
                             expect=dict(Z_STATIONARY=True, PIX_MAJOR=True, WIN=1)),
    # 1D NCL (N, C, 1, L), dilated: pixel-major
    "pixmajor-1d-ncl": dict(dim=1, layout="nchw", C=10, m=2, K=5, d=2, stride=1, pad="same",
                            size=(13,), cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=32),
                            expect=dict(Z_STATIONARY=True, PIX_MAJOR=True, WIN=1)),
    # 1D NLC, causal K7: the [pixel x channel] tile along L
    "tile-1d-nlc": dict(dim=1, layout="cl", C=6, m=1, K=7, d=1, stride=1, pad="causal",
                        size=(11,), cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=16),
                        expect=dict(Z_STATIONARY=True, PIX_MAJOR=False, WIN=1)),
}
#: the depthwise bias's offset in the norm cases: each pixel's channel mean about 1.5, so
#: dropping the norm, or letting padded lanes into the centred squares, moves y
NORM_BIAS_OFFSET = 1.5
#: ConvNeXt's epsilon, and one large enough that ignoring it moves y
NORM_EPS = [1e-6, 0.25]

NORM_CASES = sorted(pairwise(
    dict(path=list(NORM_PATHS), dtype=DTYPES, affine=[True, False],
         mid_act=["identity", "gelu"], out=["gelu", "bn"], eps=NORM_EPS),
    valid=lambda c: not (c["dtype"] == torch.float64
                         and NORM_PATHS[c["path"]]["expect"]["WIN"] > 1),
    seed=11), key=lambda c: (list(NORM_PATHS).index(c["path"]), DTYPES.index(c["dtype"])))


def _norm_epilogue(g, CM, dtype, affine, mid_act, out, eps):
    """A layer norm (weight of both signs around 1, bias about 0.5 when ``affine``), the mid
    activation, and after the 1x1 either ConvNeXt's GELU or a folded batch norm."""
    base = _epilogue(g, CM, M_OUT, dtype, (mid_act, "gelu" if out == "gelu" else "identity"),
                     affine, out == "bn")
    if affine:
        base = base._replace(mid_shift=base.mid_shift / 4)
    return base._replace(mid_norm=1, mid_eps=eps)


def _layer_norm_ref(u, epi, width=None):
    """F.layer_norm over the channels (axis 1) of u, float64, with the epilogue's weight, bias
    and epsilon. width: over the C*m channels zero-padded to ``width`` (what a kernel that
    let padded lanes into its sums would compute), cropped back."""
    CM = u.shape[1]
    ul = u.permute(0, 2, 3, 1)
    w = None if epi.mid_scale is None else epi.mid_scale.to("cpu", torch.float64)
    b = None if epi.mid_shift is None else epi.mid_shift.to("cpu", torch.float64)
    if width is not None and width > CM:
        ul = F.pad(ul, (0, width - CM))
        if w is not None:
            w, b = F.pad(w, (0, width - CM), value=1.0), F.pad(b, (0, width - CM))
    return F.layer_norm(ul, (ul.shape[-1],), w, b, epi.mid_eps)[..., :CM].permute(0, 3, 1, 2)


def _eager_norm(x, wd, bd, wp, bp, st, pads, dil, epi, dtype, absolute=False, width=None):
    """The float64 eager chain dw -> layer norm -> act -> (rounded to ``dtype``) -> pw ->
    scale/shift -> act. absolute: a bound of the kernel's rounding error scale instead
    (|u| + |mean| times the reference's 1/std, then the chain on |values| as ``_eager``).
    width: the norm over the zero-padded channels (``_layer_norm_ref``)."""
    pt, pb_, pl, pr = pads
    xp = F.pad(x, (pl, pr, pt, pb_))
    C = x.shape[1]
    r64 = lambda t: None if t is None else t.to("cpu", torch.float64)  # noqa: E731
    u = F.conv2d(xp, wd, bd, st, 0, dil, groups=C)
    if absolute:
        ab = lambda t: None if t is None else t.abs()  # noqa: E731
        mean = u.mean(1, keepdim=True)
        rstd = torch.rsqrt(u.var(1, unbiased=False, keepdim=True) + epi.mid_eps)
        v = (F.conv2d(xp.abs(), wd.abs(), bd.abs(), st, 0, dil, groups=C) + mean.abs()) * rstd
        v = apply(v, ab(r64(epi.mid_scale)), ab(r64(epi.mid_shift)), 0)
        v = v * (LIPSCHITZ if epi.mid_act else 1.0)
        y = F.conv2d(v, wp.abs(), bp.abs())
        y = apply(y, ab(r64(epi.out_scale)), ab(r64(epi.out_shift)), 0)
        return y * (LIPSCHITZ if epi.out_act else 1.0)
    v = apply(_layer_norm_ref(u, epi, width), None, None, epi.mid_act)
    v = v.to(dtype).double()
    return apply(F.conv2d(v, wp, bp), r64(epi.out_scale), r64(epi.out_shift), epi.out_act)


def _run_norm(p, x, params, st, pads, dil, epi, cfg="path"):
    """One dsd_fwd launch (counted) with the path's config, or ``cfg`` (None: the
    dispatcher's)."""
    _runtime.LAUNCHES.clear()
    if cfg == "path":
        cfg = dict(p["cfg"], num_warps=4, num_stages=2)
    y = launchers.dsd_fwd(x, *params, st, pads, dil, p["layout"] == "cl", cfg=cfg, epilogue=epi)
    assert dict(_runtime.LAUNCHES) == {"dsd_fwd_kernel": 1}, dict(_runtime.LAUNCHES)
    return y


def _check_norm(p, x, params, st, pads, dil, epi, y, block_k, dtype):
    """y against the float64 eager chain; and the check can fail: dropping the norm, letting
    the padded lanes into it (block_k > C*m) or (large eps) ignoring its epsilon each move the
    reference by more than three tolerances."""
    CM = p["C"] * p["m"]
    xr, pr = reference(x), [reference(t) for t in params]
    yr = _eager_norm(xr, *pr, st, pads, dil, epi, dtype)
    mag = _eager_norm(xr, *pr, st, pads, dil, epi, dtype, absolute=True)
    n_red = CM * p["K"] ** p["dim"]
    assert_close(y, yr, dtype, n_red, "y", magnitude=mag)
    tol = tolerance(dtype, n_red) * float(mag.abs().max())
    wrong = {"no norm": _eager(xr, *pr, st, pads, dil, epi._replace(mid_norm=0), dtype)}
    if block_k > CM:
        wrong["padded lanes"] = _eager_norm(xr, *pr, st, pads, dil, epi, dtype, width=block_k)
    if epi.mid_eps > 0.1:
        wrong["eps ignored"] = _eager_norm(xr, *pr, st, pads, dil, epi._replace(mid_eps=1e-5),
                                           dtype)
    for what, yw in wrong.items():
        gap = float((yw - yr).abs().max())
        assert gap > 3 * tol, f"{what}: moves y by only {gap:.2e} (tolerance {tol:.2e})"


@pytest.mark.portable
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("case", NORM_CASES, ids=case_id)
def test_layer_norm_matches_eager(case, launch_log):
    """dw -> F.layer_norm over the C*m channels (+ weight/bias) -> act -> pw -> epilogue, on
    every z-stationary path, against float64 eager."""
    p, dtype = NORM_PATHS[case["path"]], case["dtype"]
    CM = p["C"] * p["m"]
    g, x, params, st, pads, dil = _problem(p, dtype, seed=len(case_id(case)),
                                           bias_offset=NORM_BIAS_OFFSET)
    epi = _norm_epilogue(g, CM, dtype, case["affine"], case["mid_act"], case["out"],
                         case["eps"])
    y = _run_norm(p, x, params, st, pads, dil, epi)
    (_, kw, _), = launch_log
    assert {k: kw[k] for k in p["expect"]} == p["expect"], (case["path"], kw)
    assert (kw["MID_NORM"], kw["HAS_MID_AFFINE"], kw["BLOCK_K"]) == (
        1, case["affine"], p["cfg"]["BLOCK_K"])
    _check_norm(p, x, params, st, pads, dil, epi, y, p["cfg"]["BLOCK_K"], dtype)


def test_norm_cases_cover_every_option():
    """Each path, dtype, affine on and off, both mid activations, both epsilons, both output
    epilogues (ConvNeXt's GELU, a folded batch norm)."""
    seen = lambda key: {c[key] for c in NORM_CASES}  # noqa: E731
    assert seen("path") == set(NORM_PATHS) and seen("dtype") == set(DTYPES)
    assert seen("affine") == {True, False} and seen("mid_act") == {"identity", "gelu"}
    assert seen("eps") == set(NORM_EPS) and seen("out") == {"gelu", "bn"}
    for p in NORM_PATHS.values():  # C*m never a power of two: padded lanes on every path
        assert p["cfg"]["BLOCK_K"] > p["C"] * p["m"] and (p["C"] * p["m"]) & (p["C"] * p["m"] - 1)
    assert len(NORM_CASES) <= 20, len(NORM_CASES)


@pytest.mark.portable
@pytest.mark.parametrize("given", ["recompute-cfg", "dispatcher"])
def test_layer_norm_replaces_a_recompute_config(given, launch_log, fresh_dispatch,
                                                monkeypatch):
    """A config with BLOCK_K < C*m (passed, or the dispatcher's default: with the
    interpreter's tiles the recompute path past C*m = 64) is replaced by a z-stationary one
    (``configs.fused_norm_config``); the norm is still right."""
    from triton_dsd import configs
    monkeypatch.setattr(configs, "INTERPRETER_TILES", True)  # any device
    p = dict(NORM_PATHS["tile-k7-cl"], C=20 if given == "recompute-cfg" else 40, K=3)
    dtype = torch.float32
    CM = p["C"] * p["m"]
    g, x, params, st, pads, dil = _problem(p, dtype, bias_offset=NORM_BIAS_OFFSET)
    epi = _norm_epilogue(g, CM, dtype, True, "gelu", "bn", 1e-6)
    cfg = dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=16, num_warps=4, num_stages=2)
    if given == "dispatcher":
        from triton_dsd import registry
        fam = registry.family("dsd_fwd")
        fields = fam.key(CM, M_OUT, *p["size"], (3, 3), (1, 1), (1, 1), 2, True)
        assert not launchers.dsd_z_stationary(CM, fam.default(fields, 4))  # recompute
        assert configs.fused_norm_config(CM, M_OUT, 30, 4, "cl")["BLOCK_K"] == 128
        cfg = None
    y = _run_norm(p, x, params, st, pads, dil, epi, cfg=cfg)
    (_, kw, _), = launch_log
    assert kw["Z_STATIONARY"] and kw["MID_NORM"] == 1 and kw["BLOCK_K"] >= CM, kw
    _check_norm(p, x, params, st, pads, dil, epi, y, kw["BLOCK_K"], dtype)


def test_layer_norm_past_the_cap_is_refused(monkeypatch):
    """dsd_mid_norm_fits is True up to each dtype's cap (C*m rounded up to a power of two)
    and False past it, where dsd_fwd raises NotImplementedError before any launch; and the
    kernel itself refuses a norm on the recompute path (a config slipped past the launcher)."""
    caps = launchers.DSD_MID_NORM_MAX_CM
    for dtype in DTYPES + [torch.bfloat16]:
        cap = caps[torch.empty((), dtype=dtype).element_size()]
        assert launchers.dsd_mid_norm_fits(cap, dtype)
        assert launchers.dsd_mid_norm_fits(cap // 2 + 1, dtype)
        assert not launchers.dsd_mid_norm_fits(cap + 1, dtype)
    assert launchers.dsd_mid_norm_fits(384, torch.bfloat16)  # ConvNeXt-T stage 3

    dtype = torch.float32
    CM = caps[4] + 1
    x = torch.randn(1, CM, 3, 3, dtype=dtype)
    params = (torch.randn(CM, 1, 3, 3), None, torch.randn(8, CM, 1, 1), None)
    with pytest.raises(NotImplementedError, match="channels"):
        launchers.dsd_fwd(x, *params, (1, 1), (1, 1, 1, 1), (1, 1), False,
                          epilogue=Epilogue(mid_norm=1))
    with pytest.raises(ValueError, match="normalisation"):
        launchers.dsd_fwd(x, *params, (1, 1), (1, 1, 1, 1), (1, 1), False,
                          epilogue=Epilogue(mid_norm=2))
    assert not _runtime.LAUNCHES["dsd_fwd_kernel"]

    # the kernel's own guard: a recompute config handed through unchanged
    monkeypatch.setattr(launchers, "dsd_norm_config",
                        lambda CM, M, P, dtype, cl, cfg, default=None: cfg)
    p = NORM_PATHS["tile-1d-nlc"]
    _, x, params, st, pads, dil = _problem(p, dtype)
    with pytest.raises(Exception, match="every channel in one tile"):
        launchers.dsd_fwd(x, *params, st, pads, dil, True, epilogue=Epilogue(mid_norm=1),
                          cfg=dict(BLOCK_P=16, BLOCK_M=16, BLOCK_K=4, num_warps=4,
                                   num_stages=2))


def test_norm_config_takes_every_width_to_the_cap(monkeypatch):
    """The GPU's norm configs: z-stationary for every C*m up to the cap (both layouts, any M),
    within the shared memory budget; 16-bit NCHW past 256 channels on 16 pixel rows, fp32
    channels_last 256 on 8 warps (``configs.fused_norm_config``)."""
    from triton_dsd import configs
    monkeypatch.setattr(configs, "INTERPRETER_TILES", False)
    for elem, cap in launchers.DSD_MID_NORM_MAX_CM.items():
        for layout in ("cl", "nchw"):
            for CM in sorted({1, 6, 20, 48, 96, 192, 384, cap // 2 + 1, cap} - {0}):
                if CM > cap:
                    continue
                for M in (1, 20, 4 * CM):
                    c = configs.fused_norm_config(CM, M, 56 * 56, elem, layout)
                    assert c is not None and c["BLOCK_K"] >= CM, (elem, layout, CM, M, c)
                    smem = (c["BLOCK_P"] * c["BLOCK_K"] + c["num_stages"] * c["BLOCK_K"]
                            * c["BLOCK_M"] + c["BLOCK_P"] * c["BLOCK_M"]) * elem
                    assert smem <= configs.SMEM_LIMIT, (elem, layout, CM, M, c)
    assert configs.fused_norm_config(384, 1536, 196, 2, "nchw")["BLOCK_P"] == 16
    assert configs.fused_norm_config(200, 800, 3136, 4, "cl")["num_warps"] == 8
