"""gdcore's kernels on aarch64, under qemu-user.

csrc/ and tests/c/kernel_runner.c are cross-compiled with Debian's
gcc-aarch64-linux-gnu (the flags setup.py uses; GCC auto-vectorises the
kernels' one-element-per-pack body to NEON) and run under qemu-aarch64.  The
same runner built for the host computes the expected values from the same
input file.  Cases: every optimizer x every test configuration of
tests/conftest.py (the declared option grid and extra branches) x float32 and
float64, each one call over buffers of every size from 0 to 129 around the
NEON and unrolled-loop tails plus 1,000 elements, for five steps with a
different grad each step, through gd_step and through gd_step_scaled; and
per optimizer a 200,003-element buffer on 1 and 2 threads (above the
parallel threshold).

Expected agreement: bitwise.  Both builds compile the same scalar body with
-ffp-contract=off (no FMA contraction, IEEE basic operations and sqrt),
the host runs it through its baseline (SSE2) build, and the per-step scalars
come from the same glibc pow/exp code.  Should a libm differ in an ulp one
day, the comparison falls back to the suite's stated per-dtype tolerances
(tests/conftest.py TOLERANCES) and says so; measured here: every element of
every case identical.

Skipped, saying why, where the cross compiler or qemu is missing; .ci/run
installs both (Debian: gcc-aarch64-linux-gnu, qemu-user).
"""
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from conftest import CONFIGS, assert_close, config_id
from gdcore.family import BY_NAME, FAMILY

import gdcore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
CAPI = os.path.join(ROOT, "gdcore", "include")
RUNNER = os.path.join(ROOT, "tests", "c", "kernel_runner.c")
SOURCES = [RUNNER] + [os.path.join(CSRC, f) for f in
                      ("gd_kernels.c", "gd_kernels16.c", "gd_runtime.c", "gd_stream.c",
                       "gd_norm.c")]
FLAGS = ["-std=c11", "-O3", "-fno-math-errno", "-ffp-contract=off", "-pthread",
         "-I", CSRC, "-I", CAPI]
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"

SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 1000]
NSTEPS = 5
BIG = 200_003
GD_DTYPE = {np.float32: 0, np.float64: 1}

pytestmark = [
    pytest.mark.skipif(shutil.which(CROSS_CC) is None,
                       reason=f"no {CROSS_CC} (Debian: apt-get install gcc-aarch64-linux-gnu)"),
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"no {QEMU} (Debian: apt-get install qemu-user)"),
    pytest.mark.skipif(not os.path.exists(os.path.join(CSRC, "gd_family.h")),
                       reason="csrc/gd_family.h not generated (build gdcore from this checkout)"),
]


def _start_build(cc, exe, extra):
    return exe, subprocess.Popen([cc] + FLAGS + SOURCES + ["-o", exe, "-lm"] + extra,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish_build(exe, proc):
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, f"build of {exe} failed:\n{output[-3000:]}"
    assert "warning" not in output, output[-3000:]
    return exe


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    """(host runner, aarch64 runner) executables, built side by side.  The
    host build is the baseline kernels only (GD_NO_CLONES: the SSE2 build
    of the same scalar body), which is what the comparison wants."""
    out = tmp_path_factory.mktemp("runners")
    builds = [_start_build(shutil.which("gcc") or "cc", str(out / "runner_host"),
                           ["-DGD_NO_CLONES"]),
              _start_build(CROSS_CC, str(out / "runner_aarch64"), ["-static"])]
    host, arm = [_finish_build(*b) for b in builds]
    kind = subprocess.run(["file", arm], capture_output=True, text=True).stdout \
        if shutil.which("file") else "ARM aarch64"
    assert "aarch64" in kind, kind
    return host, arm


def _initial(init, values):
    return float(values[init] if isinstance(init, str) else init)


class Case:
    """One kernel call sequence: its header, its buffers' inputs, and the
    layout of what the runner writes back."""

    def __init__(self, name, config, dtype, sizes, *, multiplier=1.0, nthreads=1,
                 scalar_float64=0, seed=0):
        decl = BY_NAME[name]
        self.label = f"{name}[{config_id(config)}] {np.dtype(dtype).name}" + \
            (f" x{multiplier}" if multiplier != 1.0 else "") + \
            (f" threads={nthreads}" if nthreads != 1 else "")
        self.dtype = dtype
        kernel, options, slots = gdcore.capi_options(name, **config)
        values = {**decl.defaults(), **config}
        names = [s.name for s in decl.state]
        self.mask = sum(1 << names.index(s) for s in slots)
        inits = [_initial(decl.state[k].init, values) if self.mask >> k & 1 else None
                 for k in range(3 if names else 0)]
        scalars = [_initial(s.init, values) for s in decl.scalars] + [0.0, 0.0]
        rng = np.random.default_rng(seed)
        head = struct.pack("<6id", kernel, GD_DTYPE[dtype], len(options), len(sizes),
                           NSTEPS, nthreads, multiplier)
        parts = [head, np.asarray(options, "<f8").tobytes()]
        self.sizes = sizes
        for n in sizes:
            parts.append(struct.pack("<qqii2d", n, 1, self.mask, scalar_float64,
                                     scalars[0], scalars[1]))
            parts.append(rng.standard_normal(n).astype(dtype).tobytes())
            for _ in range(NSTEPS):
                # grads of both signs and mixed magnitudes (Rprop's sign
                # changes, Adagrad's and Adam's small second moments)
                g = rng.standard_normal(n) * np.exp(rng.uniform(-6, 2, n))
                parts.append(g.astype(dtype).tobytes())
            for k, init in enumerate(inits):
                if init is not None:
                    parts.append(np.full(n, init, dtype).tobytes())
        self.payload = b"".join(parts)
        self.slot_names = [names[k] for k in range(len(inits)) if inits[k] is not None]

    def unpack(self, data, offset):
        """{what: array} for each buffer from the runner's output."""
        out = []
        itemsize = np.dtype(self.dtype).itemsize
        for n in self.sizes:
            entry = {}
            for what in ["param"] + self.slot_names:
                entry[what] = np.frombuffer(data, self.dtype, n, offset)
                offset += n * itemsize
            entry["scalars"] = np.frombuffer(data, "<f8", 2, offset)
            offset += 16
            out.append(entry)
        return out, offset


def _run(exe, cases, tmp_path, tag, qemu=False):
    src, dst = tmp_path / f"cases_{tag}.bin", tmp_path / f"out_{tag}.bin"
    src.write_bytes(b"GDKRUN01" + struct.pack("<i", len(cases))
                    + b"".join(c.payload for c in cases))
    cmd = ([QEMU] if qemu else []) + [exe, str(src), str(dst)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{' '.join(cmd)}: {run.stdout}{run.stderr}"
    assert run.stdout.startswith(f"ok {len(cases)} cases"), run.stdout
    data = dst.read_bytes()
    results, offset = [], 0
    for c in cases:
        r, offset = c.unpack(data, offset)
        results.append(r)
    assert offset == len(data), "runner output has the wrong length"
    return results, run.stdout


def _compare(cases, want, got):
    """Bitwise, else within TOLERANCES (reported); returns the number of
    elements that differ in any bit."""
    differing = 0
    for case, w_case, g_case in zip(cases, want, got):
        for n, w, g in zip(case.sizes, w_case, g_case):
            for what in w:
                a, b = w[what], g[what]
                same = a.view(np.uint8).reshape(-1, a.itemsize) == \
                    b.view(np.uint8).reshape(-1, b.itemsize)
                bad = int((~same.all(axis=1)).sum())
                if bad:
                    differing += bad
                    dtype = np.float64 if what == "scalars" else case.dtype
                    assert_close(b, a, dtype, f"{case.label}, n={n}, {what}")
    return differing


def _cases_for(decl):
    cases = []
    for config in CONFIGS[decl.name]:
        for dtype in (np.float32, np.float64):
            cases.append(Case(decl.name, config, dtype, SIZES, seed=len(cases)))
    for dtype in (np.float32, np.float64):
        cases.append(Case(decl.name, {}, dtype, SIZES, multiplier=0.25, seed=99))
        cases.append(Case(decl.name, {}, dtype, SIZES, scalar_float64=1, seed=98))
    return cases


@pytest.mark.parametrize("name", [d.name for d in FAMILY])
def test_aarch64_kernels_match_the_host(runners, tmp_path, name):
    host, arm = runners
    cases = _cases_for(BY_NAME[name])
    want, _ = _run(host, cases, tmp_path, "host")
    got, _ = _run(arm, cases, tmp_path, "arm", qemu=True)
    differing = _compare(cases, want, got)
    if differing:
        print(f"{name}: {differing} elements differ from the host in the last "
              "bits, within the stated tolerances")


@pytest.mark.parametrize("name", [d.name for d in FAMILY])
def test_aarch64_threads_are_bitwise_and_match_the_host(runners, tmp_path, name):
    host, arm = runners
    dtype = np.float32
    cases = [Case(name, {}, dtype, [BIG, 5], nthreads=t, seed=7) for t in (1, 2)]
    want, _ = _run(host, cases[:1], tmp_path, "host")
    got, _ = _run(arm, cases, tmp_path, "arm", qemu=True)
    for a, b in zip(got[0], got[1]):
        for what in a:
            assert np.array_equal(a[what].view(np.uint8), b[what].view(np.uint8)), \
                f"{name}: 1 vs 2 threads differ on aarch64 ({what})"
    _compare(cases[:1], want, got[:1])


def test_aarch64_build_is_neon_vectorised(runners):
    """The README's claim: the aarch64 kernels are NEON code (GCC's
    auto-vectorisation of the scalar body), seen in the runner's machine code
    as vector square roots and divisions over 4 floats and 2 doubles."""
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("no aarch64-linux-gnu-objdump (Debian: binutils-aarch64-linux-gnu)")
    code = subprocess.run([objdump, "-d", runners[1]], capture_output=True, text=True,
                          check=True).stdout
    for op in ("fsqrt", "fdiv"):
        for lanes in ("4s", "2d"):
            count = len(re.findall(rf"\t{op}\tv\d+\.{lanes}", code))
            assert count > 0, f"no NEON {op} .{lanes} in the aarch64 build"
