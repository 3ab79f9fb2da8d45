"""Test configuration shared by the whole suite.

TRITON_INTERPRET=1 must be set before any Triton kernel is imported, so that the Triton backend runs
on CPU tensors here. ``--device``/``--dtype``/``--backend`` let the GPU script run the same tests on CUDA.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker already owns a core; torch's own threads on top oversubscribe the
# 2-core CI box (measured 10-30x slowdowns). Tests that compare thread counts set them explicitly.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for op tests (cpu or cuda)")


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
def finite_check_left_as_found():
    """Fail the test that leaves the ops' NaN/inf input check switched (a leak turns off other tests' checks)."""
    from dtifast.ops import _checks
    before = _checks.CHECK_FINITE
    yield
    after = _checks.CHECK_FINITE
    _checks.CHECK_FINITE = before
    assert after == before, f"this test left dtifast.ops._checks.CHECK_FINITE at {after}, it found {before}"
