"""Test configuration shared by the whole suite.

TRITON_INTERPRET=1 must be set before any Triton kernel is imported, so that the Triton backend runs
on CPU tensors here. ``--device cuda`` lets the GPU script run the same tests on a GPU; the ``backend``
fixture runs an op family's checklist (tests/checklist.py) on every backend of that device
(``--backend`` picks some of them).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Under pytest-xdist each worker already owns a core; torch's own threads on top oversubscribe the
# 2-core CI box (measured 10-30x slowdowns). Tests that compare thread counts set them explicitly.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


OP_BACKENDS = ("torch", "native", "triton")  # native: the C++ kernels on CPU, the CUDA kernels on CUDA

# Property-based tests: derandomised so that CI runs the same examples every time (a failure is
# reproducible); `--hypothesis-profile explore` draws new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for op tests (cpu or cuda)")
    parser.addoption("--backend", action="append", choices=OP_BACKENDS, default=None,
                     help="op backends whose checklist runs (repeatable; default: all)")


def pytest_generate_tests(metafunc):
    explicit = any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and not explicit:
        chosen = metafunc.config.getoption("--backend") or list(OP_BACKENDS)
        metafunc.parametrize("backend", chosen)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but no CUDA device is available")
    return dev


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The project's ``shared/`` folder (fixtures); tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}; the upstream fixtures live there")
    return SHARED


@pytest.fixture(autouse=True)
def value_checks_left_as_found():
    """Fail the test that leaves the ops' value checks switched (a leak changes what other tests check)."""
    from dtifast.ops import set_value_checks, value_checks_enabled
    before = value_checks_enabled()
    yield
    after = value_checks_enabled()
    set_value_checks(before)
    assert after == before, f"this test left the ops' value checks {'on' if after else 'off'}, it found them " \
                            f"{'on' if before else 'off'}"


@pytest.fixture
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` for one test (restored after)."""
    from dtifast.bench.compile import deterministic_algorithms as enabled
    with enabled(True):
        yield


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (restored after). Under ``pytest -n 2`` two workers share 2 cores: more
    than one torch thread each makes OpenMP spin-wait against the other worker, which slows training steps
    tenfold."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
