"""Offline compile report: every kernel compiled for sm_80 / sm_90 with no GPU.

Each case runs a real launcher under :func:`triton_dsd._runtime.capture_launches` on CPU
tensors of a realistic layer, so the kernel is compiled with exactly the arguments,
specialisations (stride 1, 16-divisibility), launch options (FP fusion) and default config the
launcher would launch on a GPU; the int64-index variant (IDX64) of every kernel that has one
is compiled too. The cubin is read with Triton's bundled ``cuobjdump``:

* registers; spills, three ways: the per-thread ``STACK`` and ``LOCAL`` bytes of the
  resource usage (ptxas reports spill stores as stack) and the ``LDL`` / ``STL`` instructions
  in the SASS: a kernel is ok only if all three are zero;
* shared memory: the larger of the cubin's static size and Triton's dynamic allocation;
* the SASS instruction mix: 128-bit global loads (direct or cp.async ``LDGSTS``), HGMMA / HMMA,
  and FFMA against FMUL + FADD (FP fusion on).
"""
from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from triton_dsd import _runtime, dispatch, launchers, problems, registry, shapes, store
from triton_dsd.epilogue import ACTIVATIONS, Epilogue

#: shared memory per block the hardware allows (bytes, opt-in maximum)
SHARED_LIMIT = {80: 166912, 90: 232448}


@dataclasses.dataclass
class Row:
    kernel: str
    case: str
    arch: int
    regs: int = 0
    stack_bytes: int = 0
    local_bytes: int = 0
    ldl_stl: int = 0
    shared_bytes: int = 0
    ldg128: int = 0
    hgmma: int = 0
    hmma: int = 0
    ffma: int = 0
    fmul_fadd: int = 0
    error: str = ""

    @property
    def spills(self) -> bool:
        return bool(self.stack_bytes or self.local_bytes or self.ldl_stl)

    @property
    def ok(self) -> bool:
        return (not self.error and not self.spills
                and self.shared_bytes <= SHARED_LIMIT.get(self.arch, 1 << 30))


def _cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(path):
        return path
    found = shutil.which("cuobjdump")
    if not found:
        raise RuntimeError("cuobjdump not found (it ships with Triton's NVIDIA backend)")
    return found


def img(dtype, cl, C=128, N=8, H=56, W=56):
    """An (N, C, H, W) image, channels_last or NCHW (storage-free: only compiled)."""
    x = torch.empty(N, C, H, W, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if cl else x


def seq(dtype, cl, C=256, N=8, L=4096):
    """A sequence as the (N, C, 1, L) view the functional API makes (channel-last or not)."""
    x = torch.empty(N, L, C, dtype=dtype).transpose(1, 2) if cl else torch.empty(N, C, L, dtype=dtype)
    return x.unsqueeze(2)


def _cases() -> Dict[str, Callable[[], None]]:
    """name -> a callable that runs one launcher (under capture) on a realistic layer."""
    L = launchers

    def w(C, k, dtype, kh=None):
        return torch.empty(C, 1, k if kh is None else kh, k, dtype=dtype)

    def w2(M, K, dtype):
        return torch.empty(M, K, 1, 1, dtype=dtype)

    def same(k, d):
        return shapes.resolve_padding("same", (k, k), (1, 1), (d, d))

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    b128, b384 = torch.empty(128, dtype=bf16), torch.empty(384, dtype=bf16)

    def bn(mid_act, out_act, CM=128, M=128):
        """Folded batch norms (fp32 scale/shift) on both sides of the pointwise, with the
        named activations."""
        v = lambda n: torch.empty(n, dtype=fp32)  # noqa: E731
        return Epilogue(v(CM), v(CM), ACTIVATIONS[mid_act], v(M), v(M), ACTIVATIONS[out_act])

    return {
        "fwd bf16 NHWC k3 d2": lambda: L.depthwise_fwd(
            img(bf16, True), w(128, 3, bf16), b128, (1, 1), same(3, 2), (2, 2), True),
        "fwd bf16 NCHW k3 d2": lambda: L.depthwise_fwd(
            img(bf16, False), w(128, 3, bf16), None, (1, 1), same(3, 2), (2, 2), False),
        "fwd fp32 NHWC k7 d1": lambda: L.depthwise_fwd(
            img(fp32, True), w(128, 7, fp32), None, (1, 1), same(7, 1), (1, 1), True),
        "fwd fp16 NHWC k3 s2": lambda: L.depthwise_fwd(
            img(fp16, True), w(128, 3, fp16), None, (2, 2), (1, 1, 1, 1), (1, 1), True),
        "fwd bf16 NHWC k9 m2 (row loop)": lambda: L.depthwise_fwd(
            img(bf16, True, C=64), w(128, 9, bf16), None, (1, 1), same(9, 1), (1, 1), True),
        "fwd bf16 1D-NLC k5 d4": lambda: L.depthwise_fwd(
            seq(bf16, True), w(256, 5, bf16, kh=1), None, (1, 1), (0, 0, 16, 0), (1, 4), True),
        "dx bf16 NHWC k3 d2": lambda: L.depthwise_bwd_input(
            img(bf16, True), w(128, 3, bf16), img(bf16, True), (1, 1), same(3, 2), (2, 2), True),
        "dx bf16 NCHW k3 s2": lambda: L.depthwise_bwd_input(
            img(bf16, False, H=28, W=28), w(128, 3, bf16), img(bf16, False), (2, 2), (1, 0, 1, 0),
            (1, 1), False),
        "dw+db bf16 NHWC k3 d2 atomic": lambda: L.depthwise_bwd_weight(
            img(bf16, True), img(bf16, True), w(128, 3, bf16), (1, 1), same(3, 2), (2, 2), True,
            False),
        "dw+db fp32 NCHW k7 deterministic": lambda: L.depthwise_bwd_weight(
            img(fp32, False), img(fp32, False), w(128, 7, fp32), (1, 1), same(7, 1), (1, 1), True,
            True),
        "pw fwd bf16 NHWC C128 M128": lambda: L.pointwise_fwd(
            img(bf16, True), w2(128, 128, bf16), b128, True),
        "pw fwd fp16 NCHW C128 M256": lambda: L.pointwise_fwd(
            img(fp16, False), w2(256, 128, fp16), None, False),
        "pw fwd fp32 NHWC tf32": lambda: L.pointwise_fwd(
            img(fp32, True), w2(128, 128, fp32), None, True),
        "pw dx bf16 NHWC": lambda: L.pointwise_bwd_input(
            img(bf16, True), w2(128, 128, bf16), True),
        "pw dW+db bf16 NHWC atomic": lambda: L.pointwise_bwd_weight(
            img(bf16, True), img(bf16, True), w2(128, 128, bf16), True, False),
        "fused bf16 NHWC k3 d2 C128 M128": lambda: L.dsd_fwd(
            img(bf16, True), w(128, 3, bf16), b128, w2(128, 128, bf16), b128, (1, 1), same(3, 2),
            (2, 2), True),
        "fused bf16 NHWC k3 d2 C128 M128 +bn+relu6/+bn": lambda: L.dsd_fwd(
            img(bf16, True), w(128, 3, bf16), b128, w2(128, 128, bf16), b128, (1, 1), same(3, 2),
            (2, 2), True, epilogue=bn("relu6", "identity")),
        "fused bf16 NCHW k3 C128 M128 +bn+silu/+bn+silu": lambda: L.dsd_fwd(
            img(bf16, False), w(128, 3, bf16), b128, w2(128, 128, bf16), b128, (1, 1),
            same(3, 1), (1, 1), False, epilogue=bn("silu", "silu")),
        # ConvNeXt-T stage 3: dw 7x7 -> layer norm (weight, bias) -> 1x1 (4x) -> GELU
        "fused bf16 NHWC k7 C384 M1536 +ln+gelu": lambda: L.dsd_fwd(
            img(bf16, True, C=384, N=8, H=14, W=14), w(384, 7, bf16), b384,
            w2(1536, 384, bf16), torch.empty(1536, dtype=bf16), (1, 1), same(7, 1), (1, 1),
            True, epilogue=Epilogue(torch.empty(384, dtype=fp32), torch.empty(384, dtype=fp32),
                                    ACTIVATIONS["identity"], out_act=ACTIVATIONS["gelu"],
                                    mid_norm=1, mid_eps=1e-6)),
        "fused fp16 NCHW k7 C128 M64": lambda: L.dsd_fwd(
            img(fp16, False), w(128, 7, fp16), None, w2(64, 128, fp16), None, (1, 1), same(7, 1),
            (1, 1), False),
        "fused bf16 1D-NLC k5 d4 C256 M256": lambda: L.dsd_fwd(
            seq(bf16, True), w(256, 5, bf16, kh=1), None, w2(256, 256, bf16), None, (1, 1),
            (0, 0, 16, 0), (1, 4), True),
        # speech models' large 1D kernels: rows of more than ROW_LOOP_TAPS taps loop over
        # their tap groups (the depthwise windows, and the fused windows at dilation 1)
        "fwd bf16 1D-NLC k87 d2 C512 (tap-group loop)": lambda: L.depthwise_fwd(
            seq(bf16, True, C=512), w(512, 87, bf16, kh=1), None, (1, 1), (0, 0, 172, 0),
            (1, 2), True),
        "dx bf16 1D-NLC k63 d1 C512 (tap-group loop)": lambda: L.depthwise_bwd_input(
            seq(bf16, True, C=512), w(512, 63, bf16, kh=1), seq(bf16, True, C=512), (1, 1),
            (0, 0, 31, 31), (1, 1), True),
        "fused bf16 1D-NLC k63 C256 M256 +bn+relu (windows, tap-group loop)": lambda: L.dsd_fwd(
            seq(bf16, True), w(256, 63, bf16, kh=1), None, w2(256, 256, bf16), None, (1, 1),
            (0, 0, 62, 0), (1, 1), True, epilogue=bn("relu", "identity", 256, 256)),
        # decode steps: one frame of N streams, the conv state (N, C, d*(K-1)) moved in place
        "step bf16 N1 C1024 M1024 k4 atomic": lambda: L.dsd_step(
            torch.empty(1, 1024, dtype=bf16), torch.empty(1, 1024, 3, dtype=bf16),
            w(1024, 4, bf16, kh=1), torch.empty(1024, dtype=bf16), w2(1024, 1024, bf16),
            torch.empty(1024, dtype=bf16), 1, False),
        "step bf16 N256 C1024 M1024 k31 +bn+silu/+bn+relu deterministic": lambda: L.dsd_step(
            torch.empty(256, 1024, dtype=bf16), torch.empty(256, 1024, 30, dtype=bf16),
            w(1024, 31, bf16, kh=1), None, w2(1024, 1024, bf16), None, 1, True,
            bn("silu", "relu", 1024, 1024)),
        "step fp32 N16 C256 M256 k4 d8": lambda: L.dsd_step(
            torch.empty(16, 256, dtype=fp32), torch.empty(16, 256, 24, dtype=fp32),
            w(256, 4, fp32, kh=1), None, w2(256, 256, fp32), None, 8, False),
    }


def sweep_cases() -> Dict[str, Callable[[], None]]:
    """The default configs of a broad matrix (``inspect --sweep``; minutes, not run by CI):
    both layouts, 1D and 2D, K 3/5/7/9/13 at dilation 2 along W; depthwise forward, dX and
    dW in bf16 and fp32, and the fused layer in bf16 with M 32/64/128/256."""
    L = launchers
    cases: Dict[str, Callable[[], None]] = {}
    for cl, K, dt, dim in itertools.product((True, False), (3, 5, 7, 9, 13),
                                            (torch.bfloat16, torch.float32), (2, 1)):
        C = 128 if dim == 2 else 256
        x = img(dt, cl, C) if dim == 2 else seq(dt, cl, C)
        k = (K, K) if dim == 2 else (1, K)
        w = torch.empty(C, 1, *k, dtype=dt)
        pads = shapes.resolve_padding("same", k, (1, 1), (1, 2))
        geo = ((1, 1), pads, (1, 2))
        name = f"sweep {'NHWC' if cl else 'NCHW'} {dim}D k{K} {str(dt)[6:]}"
        cases[name + " fwd"] = lambda x=x, w=w, geo=geo, cl=cl: L.depthwise_fwd(x, w, None, *geo, cl)
        cases[name + " dx"] = lambda x=x, w=w, geo=geo, cl=cl: L.depthwise_bwd_input(x, w, x, *geo, cl)
        cases[name + " dw"] = lambda x=x, w=w, geo=geo: L.depthwise_bwd_weight(x, x, w, *geo, True, False)
        if dt == torch.bfloat16:
            for M in (32, 64, 128, 256):
                pw = torch.empty(M, C, 1, 1, dtype=dt)
                cases[f"{name} fused M{M}"] = (lambda x=x, w=w, pw=pw, geo=geo, cl=cl:
                                               L.dsd_fwd(x, w, None, pw, None, *geo, cl))
    return cases


#: the cases whose kernels are also compiled with 64-bit indices (IDX64=True): one per kernel
IDX64_CASES = ("fwd bf16 NHWC k3 d2", "dx bf16 NHWC k3 d2", "dw+db bf16 NHWC k3 d2 atomic",
               "pw fwd bf16 NHWC C128 M128", "pw dW+db bf16 NHWC atomic",
               "fused bf16 NHWC k3 d2 C128 M128")


def _compile(kernel, args, kwargs, arch: int):
    """Compile one captured launch for sm_<arch> the way the runtime would, with no driver."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, sig, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    return triton.compile(ASTSource(kernel, sig, constexprs, attrs), target=target,
                          options=options.__dict__)


def _count(pattern: str, sass: str) -> int:
    return len(re.findall(pattern, sass))


def analyse(cubin_path: str) -> Dict[str, int]:
    """Resource usage and instruction mix of one cubin (Triton's bundled cuobjdump)."""
    return _read_cubin(cubin_path)[0]


def _read_cubin(cubin_path: str) -> Tuple[Dict[str, int], str]:
    """(resource usage and instruction mix, the SASS listing) of one cubin."""
    tool = _cuobjdump()
    usage = subprocess.run([tool, "--dump-resource-usage", cubin_path], capture_output=True,
                           text=True, check=True).stdout
    sass = subprocess.run([tool, "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout

    def field(name):
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    return dict(regs=field("REG"), stack_bytes=field("STACK"), local_bytes=field("LOCAL"),
                ldl_stl=_count(r"\b(?:LDL|STL)(?:\.[A-Z0-9_]+)*\s", sass),
                shared_bytes=field("SHARED"),
                ldg128=_count(r"\bLDG(?:STS)?\.E(?:\.[A-Z0-9_]+)*\.128\b", sass),
                hgmma=_count(r"\bHGMMA\.", sass), hmma=_count(r"\bHMMA\.", sass),
                ffma=_count(r"\bFFMA\b", sass), fmul_fadd=_count(r"\b(?:FMUL|FADD)\b", sass)), sass


def compile_launch(kernel, args, kwargs, arch: int, cubin_path: str) -> Tuple[Dict[str, int], str]:
    """Compile one captured launch for sm_<arch>, write its cubin to ``cubin_path`` and read it:
    (stats, SASS). A resource usage that does not parse is an error, never "no spill"."""
    compiled = _compile(kernel, args, kwargs, arch)
    with open(cubin_path, "wb") as f:
        f.write(compiled.asm["cubin"])
    stats, sass = _read_cubin(cubin_path)
    if stats["regs"] == 0:  # cuobjdump's output did not parse
        raise RuntimeError(f"cannot read the resource usage of {cubin_path}")
    # Triton's shared memory is dynamic: the cubin shows only the static part
    stats["shared_bytes"] = max(stats["shared_bytes"], compiled.metadata.shared)
    return stats, sass


def _stored_cases(dirs: Sequence[str]) -> Dict[str, Callable[[], None]]:
    """One case per stored config (shipped, or in the given folders): its launch, its config."""
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
              "float64": torch.float64}
    cases: Dict[str, Callable[[], None]] = {}
    for root in dirs:
        for path in sorted(glob.glob(os.path.join(root, "*", "device_name=*,dtype=*.json"))):
            family = os.path.basename(os.path.dirname(path))
            if family not in registry.FAMILIES:
                continue
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = None
            if data is None or store.validate(data, family) is not None:
                continue  # the lookup ignores such files too (with a warning)
            dtype = dtypes.get(data["dtype"])
            if dtype is None:
                continue
            for key, entry in data["configs"].items():
                name = f"stored {family} {data['device_name']} {data['dtype']} {key}"
                cases[name] = (lambda family=family, key=key, dtype=dtype, entry=entry:
                               _run_stored(family, key, dtype, entry))
    return cases


def _run_stored(family: str, key: str, dtype: torch.dtype, entry: dict) -> None:
    """Launch (under capture) the problem a stored key describes with its stored config."""
    try:
        prob = problems.from_key(family, key, dtype)
    except (KeyError, ValueError) as e:
        raise ValueError(f"the stored key {key!r} does not describe a {family} problem "
                         f"({type(e).__name__}: {e})") from None
    run = next(r for fam, _, _, r in problems.tunables(prob) if fam == family)
    run(store.launch_options(entry))


def collect(archs: Sequence[int] = (80, 90), cubin_dir: Optional[str] = None,
            defaults: bool = True, stored: bool = True, sweep: bool = False,
            only: Optional[Sequence[str]] = None) -> List[Row]:
    """Compile the default cases (``defaults``; with their IDX64 variants), (``stored``) every
    config the lookup can read, and (``sweep``) the broad matrix of :func:`sweep_cases`, for
    every arch."""
    if _runtime.INTERPRET:
        raise RuntimeError("the compile report needs TRITON_INTERPRET unset (run it through "
                           "`triton-dsd inspect`, which re-launches itself without it)")
    rows: List[Row] = []
    tmp = tempfile.mkdtemp(prefix="triton_dsd_cubin_")
    out_dir = cubin_dir or tmp
    os.makedirs(out_dir, exist_ok=True)
    cases: Dict[str, tuple] = {}
    if defaults:
        for name, run in _cases().items():
            cases[name] = (run, {})
            if name in IDX64_CASES:
                cases[name + " IDX64"] = (run, {"IDX64": True})
    if sweep:
        cases.update({k: (v, {}) for k, v in sweep_cases().items()})
    if only is not None:
        cases = {k: v for k, v in cases.items() if k in only}
    if stored:  # every folder the lookup reads: $TRITON_DSD_CONFIG_DIR, user cache, shipped
        cases.update({k: (v, {}) for k, v in _stored_cases(store.search_dirs()).items()})
    for case, (run, overrides) in cases.items():
        try:
            with _runtime.capture_launches() as launches, dispatch.defaults_only():
                run()
        except Exception as e:  # noqa: BLE001 - a case that cannot even be set up is a row
            rows += [Row("?", case, arch, error=f"{type(e).__name__}: {e}"[:300]) for arch in archs]
            continue
        for rec in launches:
            # overrides apply to the kernels that take them (the split finish has no IDX64)
            if overrides and not set(overrides) <= set(rec.kwargs):
                continue
            kernel, args, kwargs = rec.kernel, rec.args, {**rec.kwargs, **overrides}
            name = kernel.fn.__name__
            for arch in archs:
                slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{name}_{case}_sm{arch}").strip("_")
                try:
                    stats, _ = compile_launch(kernel, args, kwargs, arch,
                                              os.path.join(out_dir, slug + ".cubin"))
                    rows.append(Row(name, case, arch, **stats))
                except Exception as e:  # reported as a failing row, never swallowed
                    rows.append(Row(name, case, arch, error=f"{type(e).__name__}: {e}"[:300]))
    if cubin_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    head = ["kernel", "case", "arch", "regs", "stack B", "local B", "LDL/STL", "shared B",
            "LDG.128", "HGMMA", "HMMA", "FFMA", "FMUL+FADD", "ok"]
    body = [[r.kernel, r.case, f"sm_{r.arch}", str(r.regs), str(r.stack_bytes),
             str(r.local_bytes), str(r.ldl_stl), str(r.shared_bytes), str(r.ldg128),
             str(r.hgmma), str(r.hmma), str(r.ffma), str(r.fmul_fadd),
             "yes" if r.ok else ("ERROR " + r.error.splitlines()[-1][:200] if r.error
                                 else "SPILLS" if r.spills else "NO")] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep] + [fmt(b) for b in body])
