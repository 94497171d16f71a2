"""Test setup: the Triton interpreter on CPU machines (set before the kernels are imported),
poisoned outputs, launch counting, the hypothesis seed, and the offline compile report (built
once per test session)."""
import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from triton_dsd import _runtime, dispatch  # noqa: E402  (after TRITON_INTERPRET)
from helpers import DEVICE, run_fresh  # noqa: E402

if DEVICE == "cuda":
    # exact fp32 everywhere in the tests (eager convs and our GEMMs both follow this flag);
    # TF32 numerics are covered where a test turns it on explicitly
    torch.backends.cudnn.allow_tf32 = False

#: one seed per run for the property tests, printed in the header (and settable)
HYPOTHESIS_SEED = int(os.environ.get("TRITON_DSD_HYPOTHESIS_SEED",
                                     int.from_bytes(os.urandom(4), "little")))
os.environ["TRITON_DSD_HYPOTHESIS_SEED"] = str(HYPOTHESIS_SEED)  # xdist workers share it


def pytest_report_header(config):
    return [f"triton_dsd: device {DEVICE}, interpreter {_runtime.INTERPRET}, hypothesis seed "
            f"{HYPOTHESIS_SEED} (rerun with TRITON_DSD_HYPOTHESIS_SEED={HYPOTHESIS_SEED})"]


@pytest.fixture(autouse=True)
def _poison_and_count():
    """Every kernel output starts as NaN; each test starts with zero counted launches."""
    _runtime.POISON = True
    _runtime.LAUNCHES.clear()
    yield
    _runtime.POISON = False


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def launch_log(monkeypatch):
    """Records (kernel name, constexpr/config kwargs, grid) of every launch, and still launches."""
    log = []
    real = _runtime.launch

    def spy(kernel, grid, *args, **kwargs):
        log.append((kernel.fn.__name__, dict(kwargs), grid))
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_runtime, "launch", spy)
    return log


@pytest.fixture
def fresh_dispatch():
    """Forget memoised configs and issued warnings before and after the test."""
    dispatch.reset()
    yield
    dispatch.reset()


@pytest.fixture(scope="session")
def compile_report(tmp_path_factory):
    """The rows of `triton-dsd inspect --json`: read from $TRITON_DSD_INSPECT_JSON (written by
    scripts/test.sh, which runs the report once before the suite), else built once and shared
    by the xdist workers through a locked file."""
    given = os.environ.get("TRITON_DSD_INSPECT_JSON")
    if given and os.path.exists(given):
        with open(given) as f:
            return json.load(f)
    import fcntl
    shared = tmp_path_factory.getbasetemp().parent / "inspect.json"
    with open(str(shared) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shared.exists():
            out = run_fresh("-m", "triton_dsd.cli", "inspect", "--json", timeout=900)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            shared.write_text(out.stdout)
        return json.loads(shared.read_text())
