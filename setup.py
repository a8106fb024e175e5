"""Build of gdcore's one extension module, gdcore._core.

The C kernels (csrc/) are compiled into the extension with
  -O3 -fno-math-errno   so that sqrt vectorises (Python's default CFLAGS keep
                        errno semantics, which blocks it),
  -ffp-contract=off     so that every code path rounds alike (bitwise results
                        independent of thread count and instruction set),
  -pthread              gdcore's thread pool (csrc/gd_runtime.c); no OpenMP.
No -march flag: the kernels carry their own AVX-512/AVX2/baseline variants
and pick one at load time (see csrc/gd_internal.h).
Set GDCORE_DEBUG=1 to build with Cython's bounds checks on and -O0.

Before compiling, the C side of the optimizer declarations is generated
from gdcore/family.py: csrc/gd_family.h (options structs, kernel list) and
csrc/gd_family.inc (kernel bodies).  Both are build outputs (untracked).
"""
import os
import sys

import runpy

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        # -g0: no debug info (Python's CFLAGS ask for it; it tripled the
        # extension's size to 24 MB, for kernels nobody steps through)
        base = (["-O3", "-g0", "-fno-math-errno", "-ffp-contract=off", "-std=c11"] if unix
                else ["/O2", "/fp:precise", "/std:c11"])
        if os.environ.get("GDCORE_DEBUG") == "1" and unix:
            base = ["-O0", "-g", "-fno-math-errno", "-ffp-contract=off", "-std=c11"]
        sanitize = []
        if os.environ.get("GDCORE_SANITIZE") == "1" and unix:
            # tests/sanitize.sh: AddressSanitizer + UndefinedBehaviorSanitizer,
            # every UB report fatal; GDCORE_SANITIZE_BASELINE=1 builds only
            # the baseline kernels (a quicker build for CI's bounded run)
            sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        "-fno-omit-frame-pointer"]
            base = ["-O1", "-g", "-fno-math-errno", "-ffp-contract=off", "-std=c11"] + sanitize
            if os.environ.get("GDCORE_SANITIZE_BASELINE") == "1":
                base.append("-DGD_NO_CLONES")
        threads = ["-pthread"] if unix else []
        if os.environ.get("GDCORE_NO_THREADS") == "1":
            print("gdcore: building without threads (kernels run on one thread)", file=sys.stderr)
            threads = ["-DGD_NO_THREADS"]
        # -Wno-psabi: GCC notes that passing 128-byte vectors changed ABI in
        # GCC 4.6; gdcore's are only passed to always-inlined functions
        # (csrc/gd_avx512_16.h), so no call ever passes one
        quiet = ["-Wno-psabi"] if unix else []
        for ext in self.extensions:
            ext.extra_compile_args = base + quiet + threads
            ext.extra_link_args = [f for f in threads if f == "-pthread"] + sanitize
        _compile_in_parallel(self.compiler)
        super().build_extensions()


def _compile_in_parallel(compiler):
    """Compile an extension's sources side by side, one per core (the two
    kernel files take most of the build; setuptools compiles them one after
    the other).  GDCORE_BUILD_JOBS sets the number of compilers."""
    jobs = int(os.environ.get("GDCORE_BUILD_JOBS", "0")) or os.cpu_count() or 1
    # (unix compilers only: they compile one object per _compile call;
    # MSVC's compile() does its own work and has no such method)
    if jobs < 2 or compiler.compiler_type != "unix":
        return
    from concurrent.futures import ThreadPoolExecutor

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            src, ext = build[obj]
            compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        # the longest first: the kernel files
        order = sorted(build, key=lambda obj: "gd_kernels" not in obj)
        with ThreadPoolExecutor(min(jobs, max(len(order), 1))) as pool:
            list(pool.map(one, order))
        return objects

    compiler.compile = compile


def _generate_family_sources():
    """Write csrc/gd_family.{h,inc} and the type stubs gdcore/{functional,
    optim}.pyi from gdcore/family.py (only when they change, so that
    unchanged builds stay incremental)."""
    here = os.path.dirname(os.path.abspath(__file__))
    family = runpy.run_path(os.path.join(here, "gdcore", "family.py"))
    outputs = [(os.path.join("csrc", "gd_family.h"), family["c_header"]()),
               (os.path.join("csrc", "gd_family.inc"), family["c_bodies"]())]
    outputs += [(os.path.join("gdcore", name), text)
                for name, text in family["python_stubs"]().items()]
    for name, text in outputs:
        path = os.path.join(here, name)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            with open(path, "w") as f:
                f.write(text)


_generate_family_sources()
debug = os.environ.get("GDCORE_DEBUG") == "1"
extensions = [
    Extension(
        "gdcore._core",
        sources=["gdcore/_core.pyx", "csrc/gd_kernels.c", "csrc/gd_kernels16.c",
                 "csrc/gd_runtime.c", "csrc/gd_stream.c", "csrc/gd_norm.c"],
        include_dirs=["csrc", "gdcore", "gdcore/include", numpy.get_include()],
        depends=["csrc/gdcore.h", "gdcore/include/gdcore_capi.h", "csrc/gd_dlpack.h", "gdcore/_torch_reads.h", "csrc/gd_internal.h", "csrc/gd_optimizers.inc",
                 "csrc/gd_half.h", "csrc/gd_staged.inc", "csrc/gd_scalar.h",
                 "csrc/gd_kernels16_isa.inc", "csrc/gd_avx2_16.h", "csrc/gd_avx512_16.h",
                 "csrc/gd_avx512.h", "csrc/gd_family.h", "csrc/gd_family.inc",
                 "gdcore/_csrc.pxd", "gdcore/family.py"]
                + sorted(os.path.join("csrc", "optimizers", f)
                         for f in os.listdir(os.path.join("csrc", "optimizers"))),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": debug,
            "initializedcheck": debug,
            "cdivision": not debug,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
