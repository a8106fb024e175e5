"""Instruction sets: every kernel build this CPU can run passes the oracle and
consistency tests, and the AVX-512 build's Newton square root stays within a
stated distance of the correctly rounded one, special values included."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gdcore
import gdcore.functional as F
from test_oracles import BIG

HERE = os.path.dirname(os.path.abspath(__file__))
LEVELS = ["x86-64-v4-bf16", "x86-64-v4", "x86-64-v3", "baseline"]


def isa_under(level):
    env = dict(os.environ, GDCORE_ISA=level)
    run = subprocess.run([sys.executable, "-c", "import gdcore; print(gdcore.build_info()['isa'])"],
                         env=env, capture_output=True, text=True, check=True)
    return run.stdout.strip()


def test_gdcore_isa_selects_a_lower_build_and_never_a_higher_one():
    here = gdcore.build_info()["isa"]
    if "x86-64" not in here:
        pytest.skip("no instruction-set dispatch in this build")
    assert isa_under("baseline").startswith("x86-64 baseline")
    assert isa_under("not-an-isa") == here
    assert isa_under("x86-64-v4-bf16") == here  # never above what the CPU has
    assert isa_under("x86-64-v4").split(" ")[0] in {"x86-64-v4", here.split(" ")[0]}


@pytest.mark.parametrize("level", LEVELS[1:] + LEVELS[:1])
def test_every_build_passes_the_oracle_and_consistency_tests(level):
    """The suites run in this process under the dispatched build; rerun them
    under each lower build the CPU can execute (16-bit params included: each
    build has its own fused bfloat16 spans and conversion loops, checked bit
    for bit against the NumPy model and against its float32 body)."""
    here = gdcore.build_info()["isa"]
    if "x86-64" not in here:
        pytest.skip("no instruction-set dispatch in this build")
    if here.split(" ")[0] == level or LEVELS.index(level) < LEVELS.index(here.split(" ")[0]):
        pytest.skip(f"{level} is the build this process runs, or above what the CPU has")
    env = dict(os.environ, GDCORE_ISA=level)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "test_oracles.py", "test_consistency.py", "test_half.py",
         # test_half.py: its bitwise tests (the narrowing against the NumPy
         # model; the fused spans against the float32 body, every optimizer),
         # the plans and NaNs; its float64-reference tests run once, above.
         # test_oracles.py's 1,048,579-element cases run once too: under
         # each build, the sizes up to 1023 cover every SIMD tail against the
         # references, and test_consistency.py's 1,048,579-element cases
         # cover each thread's chunk (bitwise across thread counts)
         "-k", f"(not test_half or bitwise or plan or nan) and not {BIG}"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert isa_under(level).startswith(level.replace("baseline", "x86-64 baseline"))


def ulps(a, b):
    """Distance in units in the last place between same-signed finite a, b."""
    kind = np.int32 if a.dtype == np.float32 else np.int64
    return np.abs(a.view(kind).astype(np.int64) - b.view(kind).astype(np.int64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_square_root_within_one_ulp_and_special_values_exact(dtype):
    """Adagrad from a zero sum with eps=0, lr=1: p = -g / sqrt(fl(g*g)).
    The reference is the same expression in NumPy (correctly rounded sqrt and
    division).  Builds with a correctly rounded root must agree bit for bit;
    the AVX-512 build's Newton root may move the quotient by at most 1 ulp.
    Special lanes (g*g zero, subnormal, infinite, NaN) are bitwise exact."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(1)
    exponents = rng.uniform(np.log2(info.tiny) / 2, np.log2(info.max) / 2, 50_000)
    g = (rng.uniform(1, 2, exponents.size) * 2.0 ** exponents).astype(dtype)
    special = np.array([0, -0.0, info.tiny, info.tiny / 4 ** 20, np.sqrt(info.tiny) / 3,
                        np.sqrt(info.max) * 2, info.max, np.inf, -np.inf, np.nan], dtype)
    g = np.concatenate([g, special, -g[:1000]])
    for offset in range(0, 40, 7):                   # every lane position and the tails
        grad = g[offset:]
        param = np.zeros_like(grad)
        total = np.zeros_like(grad)
        with np.errstate(all="ignore"):
            want = np.zeros_like(grad) - grad / np.sqrt(grad * grad)
        F.adagrad(param, grad, total, step=1, lr=1.0, eps=0.0)
        finite = np.isfinite(want) & (want != 0)
        np.testing.assert_array_equal(np.isnan(param), np.isnan(want))
        np.testing.assert_array_equal(param[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
        worst = ulps(param[finite], want[finite]).max()
        if gdcore.build_info()["isa"].startswith("x86-64-v4"):
            assert worst <= 1, worst
        else:
            assert worst == 0, worst
        # the subnormal, tiny and huge lanes take the exact path: bitwise
        tail = slice(len(grad) - 1000 - len(special), len(grad) - 1000)
        np.testing.assert_array_equal(param[tail][:7], want[tail][:7])
