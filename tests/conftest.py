"""Test setup: the Triton interpreter on CPU machines (set before the kernels are imported),
poisoned outputs, and launch counting."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from triton_dsd import launch  # noqa: E402  (after TRITON_INTERPRET)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":
    # exact fp32 everywhere in the tests (eager convs and our GEMMs both follow this flag);
    # TF32 numerics are covered where a test turns it on explicitly
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _poison_and_count():
    """Every kernel output starts as NaN; each test starts with zero counted launches."""
    launch.POISON = True
    launch.LAUNCHES.clear()
    yield
    launch.POISON = False


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def launch_log(monkeypatch):
    """Records (kernel name, constexpr/config kwargs) of every launch, and still launches."""
    log = []
    real = launch._launch

    def spy(kernel, grid, *args, **kwargs):
        log.append((kernel.fn.__name__, dict(kwargs), grid))
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(launch, "_launch", spy)
    return log


def ran(*names: str) -> bool:
    """True if each named kernel launched at least once since the test began."""
    return all(launch.LAUNCHES[n] > 0 for n in names)


def same_format(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both tensors are dense in the same memory format(s) (ambiguous shapes, such as 1x1 maps,
    are dense in both and match either)."""
    fmt = lambda t: (t.is_contiguous(), t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))  # noqa: E731
    return fmt(a) == fmt(b)
