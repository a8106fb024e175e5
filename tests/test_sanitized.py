"""The boundary tests under AddressSanitizer + UndefinedBehaviorSanitizer.

Runs tests/sanitize.sh (a separate ASan+UBSan build of gdcore, baseline
kernels only: about two minutes in all) on the tests that attack the
Python/C boundary.  Any heap-use-after-free, buffer overflow
or undefined behaviour aborts the inner run, and this test fails with its
report.  It takes a few minutes, so it runs in CI (CI=true) or when
GDCORE_SANITIZE_TEST=1; `bash tests/sanitize.sh` runs the whole suite.
"""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

pytestmark = [
    pytest.mark.skipif(os.environ.get("GDCORE_SANITIZED") == "1",
                       reason="already running under the sanitizers"),
    pytest.mark.skipif(os.environ.get("CI", "").lower() not in ("1", "true") and
                       os.environ.get("GDCORE_SANITIZE_TEST") != "1",
                       reason="takes minutes: runs in CI, or with GDCORE_SANITIZE_TEST=1 "
                              "(or run bash tests/sanitize.sh)"),
    pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("gcc") is None,
                       reason="needs gcc's sanitizer runtimes on Linux"),
]


def test_boundary_tests_pass_under_asan_and_ubsan(tmp_path):
    env = dict(os.environ, GDCORE_SANITIZE_BASELINE="1", PYTHON=sys.executable,
               GDCORE_SANITIZE_DIR=str(tmp_path / "sanitize"))
    run = subprocess.run(
        # (without the line-by-line interrupt tests and the import-time
        # environment tests: they exercise Python code, at minutes under ASan)
        ["bash", os.path.join(HERE, "sanitize.sh"), "tests/test_reliability.py",
         "tests/test_bad_input.py", "-x", "-k", "not interrupted and not NUM_THREADS"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert " passed" in output and "ERROR: AddressSanitizer" not in output, output[-4000:]
    assert "runtime error:" not in output, output[-4000:]
