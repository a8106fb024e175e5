"""gdcore's thread pool driven from C (tests/c/pool_stress.c): random batches
from several caller threads while the thread count changes, every element
updated exactly once per call, every span on the split alignment; built once
with ThreadSanitizer and once plain with a fork (the child starts workers of
its own).  Skipped, saying why, where no C compiler or sanitizer runtime is
available."""
import os
import shutil
import subprocess
import sysconfig

import pytest

import gdcore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
CAPI = os.path.join(ROOT, "gdcore", "include")
HARNESS = os.path.join(ROOT, "tests", "c", "pool_stress.c")

pytestmark = pytest.mark.skipif(not gdcore.build_info()["threads"],
                                reason="built without threads")


def compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def build(tmp_path, name, flags):
    cc = compiler()
    if cc is None:
        pytest.skip("no C compiler")
    if not os.path.exists(os.path.join(CSRC, "gd_family.h")):
        pytest.skip("csrc/gd_family.h not generated (build gdcore from this checkout first)")
    exe = str(tmp_path / name)
    cmd = [cc, "-std=c11", "-g", "-pthread", "-I", CSRC, "-I", CAPI, HARNESS,
           os.path.join(CSRC, "gd_runtime.c"), "-o", exe, "-lm"] + flags
    out = subprocess.run(cmd, capture_output=True, text=True)
    return exe, out


def test_pool_under_thread_sanitizer(tmp_path):
    exe, out = build(tmp_path, "pool_tsan", ["-O1", "-fsanitize=thread"])
    if out.returncode != 0:
        pytest.skip(f"compiler cannot build with -fsanitize=thread: {out.stderr[-300:]}")
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    env.pop("LD_PRELOAD", None)
    run = subprocess.run([exe, "20"], capture_output=True, text=True, timeout=600, env=env)
    if run.returncode != 0 and "FATAL: ThreadSanitizer" in run.stderr and \
            "unexpected memory mapping" in run.stderr:
        pytest.skip("ThreadSanitizer cannot run on this kernel's memory layout")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-4000:]


def test_pool_plain_build_with_fork(tmp_path):
    exe, out = build(tmp_path, "pool_plain", ["-O2", "-Wall", "-Wextra", "-Werror"])
    assert out.returncode == 0, out.stderr[-2000:]
    run = subprocess.run([exe, "60", "fork"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-4000:]
