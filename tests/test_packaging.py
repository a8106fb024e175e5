"""Packaging (issue 12, section 1): the sdist that ``python -m build
--sdist`` makes holds the sources a build needs and no build outputs, and
``pip install`` of it into a fresh virtual environment builds gdcore,
which then imports and steps an optimizer.

Slow (a full build from source, about two minutes on two cores) and needs
the package index for the build requirements and numpy, as CI has."""
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), ROOT],
                   check=True, capture_output=True, text=True, timeout=600)
    (path,) = list(out.glob("gdcore-*.tar.gz"))
    return path


def test_sdist_holds_sources_and_no_build_outputs(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ["setup.py", "pyproject.toml", "README.md", "gdcore/_core.pyx",
                   "gdcore/_csrc.pxd", "gdcore/family.py", "gdcore/torch.py",
                   "csrc/gdcore.h", "csrc/gd_avx512.h", "csrc/gd_dlpack.h",
                   "csrc/gd_kernels.c", "csrc/gd_kernels16.c", "csrc/gd_scalar.h",
                   "csrc/gd_kernels16_isa.inc", "csrc/gd_runtime.c", "csrc/optimizers/adam.inc",
                   "gdcore/include/gdcore_capi.h", "gdcore/capi.pxd"]:
        assert needed in names, f"the sdist lacks {needed}"
    for generated in ["gdcore/_core.c", "csrc/gd_family.h", "csrc/gd_family.inc"]:
        assert generated not in names, f"the sdist ships the build output {generated}"
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_sdist_installs_into_a_fresh_venv_and_steps(sdist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(sdist)],
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
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
        print(gdcore.build_info()["isa"])
    """ % str(venv))
    run = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
