#!/usr/bin/env bash
# Build gdcore with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# test suite (or the pytest arguments given) against that build.
#
#   bash tests/sanitize.sh                         # the whole suite, every ISA variant
#   bash tests/sanitize.sh tests/test_reliability.py -k plan
#   GDCORE_SANITIZE_BASELINE=1 bash tests/sanitize.sh ...   # baseline kernels only (quicker)
#
# The sanitized extension is built into build/sanitize (GDCORE_SANITIZE_DIR)
# beside a copy of the package's Python files; pytest runs with that
# directory first on sys.path (python -P: the checkout's own gdcore/ is not
# imported), with libasan and libubsan preloaded (the interpreter itself is
# not instrumented).  Any memory error or undefined behaviour aborts the run
# with a report and a non-zero exit status.  Leak checking is off: CPython
# and torch keep allocations alive until exit by design.
# Needs gcc with its sanitizer runtimes (Debian's gcc-12 ships them) and a
# Python environment with the test dependencies (.venv by default: PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${GDCORE_SANITIZE_DIR:-build/sanitize}
CC=${CC:-gcc}

"$PY" -m pip install -q "Cython>=3.0" "setuptools>=64" 2>&1 | grep -v "^WARNING: Location" || true
rm -rf "$OUT"
mkdir -p "$OUT/gdcore"
GDCORE_SANITIZE=1 CC="$CC" "$PY" setup.py -q build_ext --build-lib "$OUT" \
    --build-temp "$OUT/tmp" >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
cp gdcore/*.py gdcore/*.pyi gdcore/py.typed "$OUT/gdcore/"

preload="$("$CC" -print-file-name=libasan.so) $("$CC" -print-file-name=libubsan.so)"
for lib in $preload; do
    [ -e "$lib" ] || { echo "sanitize.sh: $CC has no $lib" >&2; exit 1; }
done
if [ "$#" -eq 0 ]; then set -- tests; fi
export LD_PRELOAD="$preload"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export PYTHONPATH="$PWD/$OUT${PYTHONPATH:+:$PYTHONPATH}"
export GDCORE_SANITIZED=1
exec "$PY" -P -m pytest -q -p no:cacheprovider "$@"
