"""The C API (issue 12, section 4): a Cython extension built at test time
against the installed gdcore (``gdcore.get_include()``, ``cimport
gdcore.capi``; it does not link against gdcore) steps Adam without the GIL
through the table gdcore._core publishes, and gets gdcore's own Python
API's result bit for bit.  Also: the table's version and lookups, and
capi_options' checks."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gdcore

pytest.importorskip("Cython")

EXTENSION = textwrap.dedent("""
    # cython: language_level=3, boundscheck=False, wraparound=False
    from gdcore.capi cimport (gdcore_capi, gdcore_import_capi, gd_buffer, gd_dtype, GD_FLOAT32,
                              GDCORE_CAPI_MAJOR)

    cdef const gdcore_capi *gd = gdcore_import_capi()

    def version():
        return gd.major, gd.minor, GDCORE_CAPI_MAJOR

    def kernel_index(bytes name):
        return gd.kernel_index(name)

    def adam_steps(float[::1] param, float[::1] grad, float[::1] exp_avg,
                   float[::1] exp_avg_sq, double[::1] options, int kernel, int steps):
        '''`steps` Adam steps on one buffer, without the GIL; returns the
        status of the last call.'''
        cdef gd_buffer b
        cdef int s, status = 0
        b.param = &param[0]
        b.grad = &grad[0]
        b.state[0] = &exp_avg[0]
        b.state[1] = &exp_avg_sq[0]
        b.state[2] = NULL
        b.n = param.shape[0]
        b.scalar_float64 = 0
        with nogil:
            for s in range(steps):
                b.step = s + 1
                status = gd.step(kernel, GD_FLOAT32, &options[0], &b, 1)
        return status

    def bad_dtype(double[::1] options, int kernel):
        cdef gd_buffer b
        return gd.step(kernel, <gd_dtype>7, &options[0], &b, 0)
""")

SETUP = textwrap.dedent("""
    import os, gdcore, numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    # include_path: where Cython finds gdcore/capi.pxd (site-packages is on
    # sys.path anyway; an editable install is not)
    setup(ext_modules=cythonize(
        [Extension("embedded", ["embedded.pyx"],
                   include_dirs=[gdcore.get_include(), numpy.get_include()])],
        include_path=[os.path.dirname(os.path.dirname(gdcore.__file__))],
        quiet=True), script_args=["build_ext", "--inplace"])
""")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    where = tmp_path_factory.mktemp("embedded")
    (where / "embedded.pyx").write_text(EXTENSION)
    (where / "setup.py").write_text(SETUP)
    build = subprocess.run([sys.executable, "setup.py"], cwd=where, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    sys.path.insert(0, str(where))
    try:
        import embedded
    finally:
        sys.path.remove(str(where))
    return embedded


def test_extension_does_not_link_against_gdcore(embedded):
    if sys.platform != "linux":
        pytest.skip("ldd")
    out = subprocess.run(["ldd", embedded.__file__], capture_output=True, text=True)
    assert "_core" not in out.stdout


def test_table_version_and_kernel_lookup(embedded):
    major, minor, built = embedded.version()
    assert major == built == 2 and minor >= 0
    assert embedded.kernel_index(b"adam") == gdcore.capi_options("Adam")[0]
    assert embedded.kernel_index(b"no such kernel") == -1


@pytest.mark.parametrize("config", [dict(lr=1e-2), dict(lr=3e-3, weight_decay=0.1,
                                                        betas=(0.8, 0.95), eps=1e-6)])
def test_adam_through_the_c_api_equals_gdcores_python_api(embedded, config):
    rng = np.random.default_rng(0)
    n, steps = 100_003, 5                   # odd: every SIMD tail
    param = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    kernel, options, slots = gdcore.capi_options("Adam", **config)
    assert slots == ("exp_avg", "exp_avg_sq")
    ours = param.copy()
    exp_avg, exp_avg_sq = np.zeros(n, np.float32), np.zeros(n, np.float32)
    assert embedded.adam_steps(ours, grad, exp_avg, exp_avg_sq, options, kernel, steps) == 0

    theirs = param.copy()
    opt = gdcore.Adam([theirs], **config)
    for _ in range(steps):
        opt.step([grad])
    assert np.array_equal(ours, theirs)
    assert np.array_equal(exp_avg, opt.state[theirs]["exp_avg"])
    assert np.array_equal(exp_avg_sq, opt.state[theirs]["exp_avg_sq"])


def test_c_api_refuses_unknown_kernel_and_dtype(embedded):
    _, options, _ = gdcore.capi_options("Adam")
    assert embedded.bad_dtype(options, 0) == -1
    assert embedded.adam_steps(np.zeros(4, np.float32), np.zeros(4, np.float32),
                               np.zeros(4, np.float32), np.zeros(4, np.float32), options,
                               len(gdcore.build_info()["kernels"]), 1) == -1


def test_capi_options_checks_as_torch():
    with pytest.raises(ValueError, match="learning rate"):
        gdcore.capi_options("Adam", lr=-1.0)
    with pytest.raises(TypeError, match="momentum"):
        gdcore.capi_options("Adam", momentum=0.9)
    with pytest.raises(ValueError, match="unknown optimizer"):
        gdcore.capi_options("Adamm")
    kernel, options, slots = gdcore.capi_options("SGD", lr=0.1, momentum=0.9, nesterov=True)
    assert slots == ("momentum_buffer",)
    assert options.dtype == np.float64 and list(options[:2]) == [0.1, 0.9]
    assert 1.0 in list(options[2:])                 # nesterov
