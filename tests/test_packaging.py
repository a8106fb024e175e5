"""Packaging (issue 12, section 1): the sdist that ``python -m build
--sdist`` makes holds the sources a build needs and no build outputs, and
``pip install`` of it into a fresh virtual environment builds gdcore,
which then imports and steps an optimizer.

Slow (a full build from source, about two minutes on two cores, shared with
test_clang.py: see sdist_build.py) and needs the package index for the
build requirements and numpy, as CI has."""
import subprocess
import tarfile
import textwrap


def test_sdist_holds_sources_and_no_build_outputs(sdist_install):
    with tarfile.open(sdist_install.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ["setup.py", "pyproject.toml", "README.md", "gdcore/_core.pyx",
                   "gdcore/_csrc.pxd", "gdcore/family.py", "gdcore/torch.py",
                   "csrc/gdcore.h", "csrc/gd_avx512.h", "csrc/gd_dlpack.h",
                   "csrc/gd_kernels.c", "csrc/gd_kernels16.c", "csrc/gd_scalar.h",
                   "csrc/gd_kernels16_isa.inc", "csrc/gd_runtime.c", "csrc/optimizers/adam.inc",
                   "gdcore/include/gdcore_capi.h", "gdcore/capi.pxd",
                   "gdcore/_torch_reads.cpp", "gdcore/_torch_reads.h"]:
        assert needed in names, f"the sdist lacks {needed}"
    for generated in ["gdcore/_core.c", "csrc/gd_family.h", "csrc/gd_family.inc"]:
        assert generated not in names, f"the sdist ships the build output {generated}"
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_sdist_installs_into_a_fresh_venv_and_steps(sdist_install, tmp_path):
    assert sdist_install.returncode == 0, sdist_install.log[-6000:]
    script = textwrap.dedent("""
        import numpy as np, gdcore
        assert gdcore.__file__.startswith(%r), gdcore.__file__
        p = np.zeros(3, np.float32)
        opt = gdcore.Adam([p], lr=0.1)
        opt.step([np.ones(3, np.float32)])
        assert np.allclose(p, -0.1), p
        import os
        assert os.path.exists(os.path.join(gdcore.get_include(), "gdcore_capi.h"))
        assert os.path.exists(os.path.join(os.path.dirname(gdcore.__file__), "capi.pxd"))
        for name in ("_torch_reads.cpp", "_torch_reads.h"):   # gdcore.torch compiles them
            assert os.path.exists(os.path.join(os.path.dirname(gdcore.__file__), name)), name
        print(gdcore.build_info()["isa"])
    """ % str(sdist_install.venv))
    run = subprocess.run([sdist_install.python, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
