"""One build from source shared by two slow tests: the sdist that
``python -m build --sdist`` makes, installed by pip into a fresh virtual
environment (test_packaging.py), compiled with clang when clang >= 14 is
installed (test_clang.py then runs its test subset against that install).
A build from source takes one and a half to two minutes on two cores;
sharing it keeps the suite's two builds down to one."""
import os
import re
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def find_clang():
    """The path of a clang >= 14, or None."""
    for name in ("clang-14", "clang-15", "clang-16", "clang"):
        path = shutil.which(name)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True)
            match = re.search(r"clang version (\d+)", out.stdout)
            if match and int(match.group(1)) >= 14:
                return path
    return None


@dataclass
class Install:
    sdist: Path             # the .tar.gz
    venv: Path
    python: str             # the fresh environment's interpreter
    clang: str | None       # the compiler pip built gdcore with (None: the default, gcc)
    returncode: int         # pip's
    log: str                # pip's verbose output (the compiler's warnings included)

    def run_with_test_packages(self, args, cwd, timeout):
        """Run the fresh environment's python with this interpreter's
        packages (pytest, torch, ...) visible after its own: gdcore and numpy
        come from the fresh environment, everything it lacks from here."""
        site_dir = subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True).stdout.strip()
        ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
        # a plain path line appends the directory to sys.path after the
        # environment's own site-packages; the .pth files in it (this
        # checkout's editable install of gdcore among them) are not run
        Path(site_dir, "zz_test_packages.pth").write_text("\n".join(ours) + "\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["GDCORE_TESTS_EXPECT_INSTALL"] = str(self.venv)    # checked by conftest.py
        return subprocess.run([self.python] + list(args), cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)


def build_and_install(workdir):
    """Build the sdist into workdir/dist and pip install it into the fresh
    environment workdir/venv (with clang when found)."""
    dist = Path(workdir) / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    (sdist,) = list(dist.glob("gdcore-*.tar.gz"))
    venv = Path(workdir) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    clang = find_clang()
    env = dict(os.environ)
    if clang:
        env.update(CC=clang, LDSHARED=f"{clang} -shared")
    install = subprocess.run([python, "-m", "pip", "install", "-v", str(sdist)], env=env,
                             capture_output=True, text=True, timeout=1200)
    return Install(sdist, venv, python, clang, install.returncode,
                   install.stdout + install.stderr)
