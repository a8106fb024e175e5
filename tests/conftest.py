import itertools
import os

import numpy as np
import pytest

import gdcore
from gdcore.family import BY_NAME, FAMILY  # noqa: F401

# test_clang.py runs tests against an installed build: they must import it
_EXPECTED = os.environ.get("GDCORE_TESTS_EXPECT_INSTALL")
if _EXPECTED and not gdcore.__file__.startswith(_EXPECTED):
    raise RuntimeError(f"the tests import {gdcore.__file__}, not the build in {_EXPECTED}")

DTYPES = [np.float32, np.float64]

# Element-wise tolerances, per dtype, for NSTEPS steps of any optimizer in
# CONFIGS against the float64 reference and against torch.optim:
#     |got - want| <= rtol * |want| + atol * scale,   scale = max(1, max|want|)
# element by element (never norms).  atol is in units of the buffer's largest
# value so that it means "ulps of the data": 64 float32 ulps, ~225 float64
# ulps.  Measured worst cases (20 steps, sizes 7..4096): float32 2.9e-6
# (RMSprop centered, alpha=0.3: sqrt(v - ga^2) cancels), all others below
# 6e-7; float64 1.2e-14.
TOLERANCES = {
    np.float32: dict(rtol=1e-5, atol=8e-6),
    np.float64: dict(rtol=1e-11, atol=5e-14),
}


def assert_close(got, want, dtype, what=""):
    """Element-wise comparison under TOLERANCES[dtype] (see above)."""
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    tol = TOLERANCES[dtype]
    scale = max(1.0, float(np.max(np.abs(want[np.isfinite(want)])))) \
        if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=what)


SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1023, 2**20 + 3]
NSTEPS = 20


def _configs(decl):
    """Every combination of the declared test values (gdcore/family.py) that
    passes the optimizer's checks, then the declared extra configurations:
    every option, and every combination of options that changes the math."""
    axes = [h for h in decl.hyper if not h.fixed]
    out = []
    for values in itertools.product(*(h.test for h in axes)):
        config = {h.name: v for h, v in zip(axes, values)}
        if decl.valid({**decl.defaults(), **config}):
            out.append({k: v for k, v in config.items()
                        if k == "lr" or v != decl.defaults()[k]})
    return out + [dict(c) for c in decl.extra_configs]


CONFIGS = {decl.name: _configs(decl) for decl in FAMILY}
SCALARS = {decl.name: {s.name for s in decl.scalars} for decl in FAMILY}


def config_id(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


@pytest.fixture
def threads():
    """Set the thread count for a test; restores the previous one after."""
    before = gdcore.get_num_threads()
    yield gdcore.set_num_threads
    gdcore.set_num_threads(before)


@pytest.fixture
def fast_path_calls(monkeypatch):
    """What gdcore.torch's C path (_core.run_plan_torch) returned, call by
    call: 1 ran, 0 took the general path, 2 rebuilt the engine."""
    gt = pytest.importorskip("gdcore.torch")
    seen = []
    real = gt._core.run_plan_torch

    def counting(*args):
        seen.append(real(*args))
        return seen[-1]
    monkeypatch.setattr(gt._core, "run_plan_torch", counting)
    return seen


@pytest.fixture(scope="session")
def sdist_install(tmp_path_factory):
    """gdcore's sdist, pip installed into a fresh virtual environment (with
    clang when installed): one build from source for test_packaging.py and
    test_clang.py (see sdist_build.py)."""
    pytest.importorskip("build")
    from sdist_build import build_and_install
    return build_and_install(tmp_path_factory.mktemp("sdist"))
