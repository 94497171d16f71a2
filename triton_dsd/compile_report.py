"""Offline compile report: every kernel compiled for sm_80 / sm_90 with no GPU.

Each case runs a real launcher under :func:`triton_dsd.launch.capture_launches` on CPU tensors
of a realistic layer, so the kernel is compiled with exactly the arguments, specialisations
(stride 1, 16-divisibility) and default config the launcher would launch on a GPU. The cubin
is read with Triton's bundled ``cuobjdump``: registers, local memory (spills), shared memory,
and the SASS instruction mix (128-bit global loads, direct or cp.async ``LDGSTS``, HGMMA / HMMA);
shared memory is the larger of the cubin's static size and Triton's dynamic allocation.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import torch

#: shared memory per block the hardware allows (bytes, opt-in maximum)
SHARED_LIMIT = {80: 166912, 90: 232448}


@dataclasses.dataclass
class Row:
    kernel: str
    case: str
    arch: int
    regs: int
    spill_bytes: int
    shared_bytes: int
    ldg128: int
    hgmma: int
    hmma: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return (not self.error and self.spill_bytes == 0
                and self.shared_bytes <= SHARED_LIMIT.get(self.arch, 1 << 30))


def _cuobjdump() -> str:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(path):
        return path
    found = shutil.which("cuobjdump")
    if not found:
        raise RuntimeError("cuobjdump not found (it ships with Triton's NVIDIA backend)")
    return found


def _cases() -> Dict[str, Callable[[], None]]:
    """name -> a callable that runs one launcher (under capture) on a realistic layer."""
    from triton_dsd import launch

    def img(dtype, cl, C=128, N=8, H=56, W=56):
        x = torch.empty(N, C, H, W, dtype=dtype)
        return x.to(memory_format=torch.channels_last) if cl else x

    def seq(dtype, cl, C=256, N=8, L=4096):  # 1D as the (N, C, 1, L) view the functional API makes
        x = torch.empty(N, L, C, dtype=dtype).transpose(1, 2) if cl else torch.empty(N, C, L, dtype=dtype)
        return x.unsqueeze(2)

    def w(C, k, dtype, kh=None):
        return torch.empty(C, 1, k if kh is None else kh, k, dtype=dtype)

    def w2(M, K, dtype):
        return torch.empty(M, K, 1, 1, dtype=dtype)

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    pad = lambda k, d: (d * (k - 1) // 2,) * 4  # noqa: E731
    cases = {
        "fwd bf16 NHWC k3 d2": lambda: launch.depthwise_fwd(
            img(bf16, True), w(128, 3, bf16), torch.empty(128, dtype=bf16), (1, 1), pad(3, 2), (2, 2), True),
        "fwd bf16 NCHW k3 d2": lambda: launch.depthwise_fwd(
            img(bf16, False), w(128, 3, bf16), None, (1, 1), pad(3, 2), (2, 2), False),
        "fwd fp32 NHWC k7 d1": lambda: launch.depthwise_fwd(
            img(fp32, True), w(128, 7, fp32), None, (1, 1), pad(7, 1), (1, 1), True),
        "fwd fp16 NHWC k3 s2": lambda: launch.depthwise_fwd(
            img(fp16, True), w(128, 3, fp16), None, (2, 2), pad(3, 1), (1, 1), True),
        "fwd bf16 NHWC k9 m2 (row loop)": lambda: launch.depthwise_fwd(
            img(bf16, True, C=64), w(128, 9, bf16), None, (1, 1), pad(9, 1), (1, 1), True),
        "fwd bf16 1D-NLC k5 d4": lambda: launch.depthwise_fwd(
            seq(bf16, True), w(256, 5, bf16, kh=1), None, (1, 1), (0, 0, 16, 0), (1, 4), True),
        "dx bf16 NHWC k3 d2": lambda: launch.depthwise_bwd_input(
            img(bf16, True), w(128, 3, bf16), img(bf16, True), (1, 1), pad(3, 2), (2, 2), True),
        "dx bf16 NCHW k3 s2": lambda: launch.depthwise_bwd_input(
            img(bf16, False, H=28, W=28), w(128, 3, bf16), img(bf16, False), (2, 2), (1, 0, 1, 0), (1, 1), False),
        "dw+db bf16 NHWC k3 d2 atomic": lambda: launch.depthwise_bwd_weight(
            img(bf16, True), img(bf16, True), w(128, 3, bf16), (1, 1), pad(3, 2), (2, 2), True, False),
        "dw+db fp32 NCHW k7 deterministic": lambda: launch.depthwise_bwd_weight(
            img(fp32, False), img(fp32, False), w(128, 7, fp32), (1, 1), pad(7, 1), (1, 1), True, True),
        "pw fwd bf16 NHWC C128 M128": lambda: launch.pointwise_fwd(
            img(bf16, True), w2(128, 128, bf16), torch.empty(128, dtype=bf16), True),
        "pw fwd fp16 NCHW C128 M256": lambda: launch.pointwise_fwd(
            img(fp16, False), w2(256, 128, fp16), None, False),
        "pw fwd fp32 NHWC tf32": lambda: launch.pointwise_fwd(
            img(fp32, True), w2(128, 128, fp32), None, True),
        "pw dx bf16 NHWC": lambda: launch.pointwise_bwd_input(
            img(bf16, True), w2(128, 128, bf16), True),
        "pw dW+db bf16 NHWC atomic": lambda: launch.pointwise_bwd_weight(
            img(bf16, True), img(bf16, True), w2(128, 128, bf16), True, False),
        "fused bf16 NHWC k3 d2 C128 M128": lambda: launch.dsd_fwd(
            img(bf16, True), w(128, 3, bf16), torch.empty(128, dtype=bf16), w2(128, 128, bf16),
            torch.empty(128, dtype=bf16), (1, 1), pad(3, 2), (2, 2), True),
        "fused fp16 NCHW k7 C128 M64": lambda: launch.dsd_fwd(
            img(fp16, False), w(128, 7, fp16), None, w2(64, 128, fp16), None, (1, 1), pad(7, 1),
            (1, 1), False),
        "fused bf16 1D-NLC k5 d4 C256 M256": lambda: launch.dsd_fwd(
            seq(bf16, True), w(256, 5, bf16, kh=1), None, w2(256, 256, bf16), None, (1, 1),
            (0, 0, 16, 0), (1, 4), True),
    }
    return cases


def _compile(kernel, args, kwargs, arch: int):
    """Compile one captured launch for sm_<arch> the way the runtime would, with no driver."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, sig, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    return triton.compile(ASTSource(kernel, sig, constexprs, attrs), target=target,
                          options=options.__dict__)


def _analyse(cubin: bytes, cubin_path: str) -> Dict[str, int]:
    with open(cubin_path, "wb") as f:
        f.write(cubin)
    tool = _cuobjdump()
    usage = subprocess.run([tool, "--dump-resource-usage", cubin_path], capture_output=True,
                           text=True, check=True).stdout
    sass = subprocess.run([tool, "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout

    def field(name):
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    return dict(regs=field("REG"), spill_bytes=field("LOCAL"), shared_bytes=field("SHARED"),
                ldg128=len(re.findall(r"\bLDG(?:STS)?\.E(?:\.[A-Z0-9_]+)*\.128\b", sass)),
                hgmma=len(re.findall(r"\bHGMMA\.", sass)),
                hmma=len(re.findall(r"\bHMMA\.", sass)))


def _stored_cases(dirs: Sequence[str]) -> Dict[str, Callable[[], None]]:
    """One case per stored config (shipped, or in the given folders): its launch, its config."""
    import glob
    import json
    from triton_dsd import problems, tuning
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
              "float64": torch.float64}
    cases: Dict[str, Callable[[], None]] = {}
    for root in dirs:
        for path in sorted(glob.glob(os.path.join(root, "*", "device_name=*,dtype=*.json"))):
            family = os.path.basename(os.path.dirname(path))
            if family not in tuning.FAMILIES:
                continue
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = None
            if data is None or tuning.validate(data, family) is not None:
                continue  # the lookup ignores such files too (with a warning)
            dtype = dtypes.get(data["dtype"])
            if dtype is None:
                continue
            for key, cfg in data["configs"].items():
                cfg = {k: v for k, v in cfg.items() if k not in ("ms", "tuned_at")}
                prob = problems.from_key(family, key, dtype)
                run = next(r for fam, _, _, r in problems.tunables(prob) if fam == family)
                name = f"stored {family} {data['device_name']} {data['dtype']} {key}"
                cases[name] = (lambda run=run, cfg=cfg: run(cfg))
    return cases


def collect(archs: Sequence[int] = (80, 90), cubin_dir: Optional[str] = None,
            extra_kwargs: Optional[dict] = None, stored: bool = True,
            only: Optional[Sequence[str]] = None) -> List[Row]:
    """Compile every default case and (stored=True) every shipped config, plus the configs in
    $TRITON_DSD_CONFIG_DIR, for every arch; ``extra_kwargs`` overrides launch kwargs (IDX64)."""
    from triton_dsd import launch, tuning
    if launch.interpreting():
        raise RuntimeError("the compile report needs TRITON_INTERPRET unset (run it through "
                           "`triton-dsd inspect`, which re-launches itself without it)")
    rows: List[Row] = []
    tmp = tempfile.mkdtemp(prefix="triton_dsd_cubin_")
    out_dir = cubin_dir or tmp
    os.makedirs(out_dir, exist_ok=True)
    cases = dict(_cases())
    if only is not None:
        cases = {k: v for k, v in cases.items() if k in only}
    if stored:
        dirs = [tuning.shipped_dir()]
        if os.environ.get("TRITON_DSD_CONFIG_DIR"):
            dirs.insert(0, os.environ["TRITON_DSD_CONFIG_DIR"])
        cases.update(_stored_cases(dirs))
    for case, run in cases.items():
        with launch.capture_launches() as launches, tuning.defaults_only():
            run()
        for kernel, _grid, args, kwargs in launches:
            # overrides apply to the kernels that take them (the split-K finish has no IDX64)
            kwargs = {**kwargs, **{k: v for k, v in (extra_kwargs or {}).items() if k in kwargs}}
            name = kernel.fn.__name__
            for arch in archs:
                slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{name}_{case}_sm{arch}").strip("_")
                try:
                    compiled = _compile(kernel, args, kwargs, arch)
                    stats = _analyse(compiled.asm["cubin"], os.path.join(out_dir, slug + ".cubin"))
                    # Triton's shared memory is dynamic: the cubin shows only the static part
                    stats["shared_bytes"] = max(stats["shared_bytes"], compiled.metadata.shared)
                    rows.append(Row(name, case, arch, **stats))
                except Exception as e:  # reported as a failing row, never swallowed
                    rows.append(Row(name, case, arch, 0, 0, 0, 0, 0, 0,
                                    error=f"{type(e).__name__}: {e}"[:300]))
    if cubin_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    head = ["kernel", "case", "arch", "regs", "spill B", "shared B", "LDG.128", "HGMMA", "HMMA", "ok"]
    body = [[r.kernel, r.case, f"sm_{r.arch}", str(r.regs), str(r.spill_bytes),
             str(r.shared_bytes), str(r.ldg128), str(r.hgmma), str(r.hmma),
             "yes" if r.ok else ("ERROR " + r.error.splitlines()[-1][:200] if r.error else "NO")] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep] + [fmt(b) for b in body])
