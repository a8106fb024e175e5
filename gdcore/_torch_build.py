"""Compile and load gdcore/_torch_reads.cpp against the installed torch.

gdcore.torch reads each param's grad and checks params and grads through
torch's C++ API when this module can provide it (see _torch_reads.cpp: a
few ns a tensor, against about 0.3 us through torch's Python-level C
functions).  torch's C++ ABI is that of the torch build, so the reader is
compiled on first use, with the C++ compiler Python was built with (or
$CXX) and torch's headers, into a cache directory keyed by everything the
binary depends on (the source, torch's version and location, the Python
ABI, the compiler): ``$GDCORE_CACHE``, else ``$XDG_CACHE_HOME/gdcore``,
else ``~/.cache/gdcore``.  A file lock makes concurrent processes (one per
rank) compile once.  About 10 s, once per torch install.

``GDCORE_TORCH_READS=0`` turns the reader off (gdcore.torch then uses
torch's DLPack exchange table: the same checks, slower).  Any failure (no
compiler, no headers, a compile error, a load error) does the same; its
reason is kept in ``STATUS`` for the curious (and the tests).
"""
import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE = os.path.join(_HERE, "_torch_reads.cpp")
_HEADER = os.path.join(_HERE, "_torch_reads.h")

STATUS = "not tried"


def _cache_dir():
    root = os.environ.get("GDCORE_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "gdcore")
    return root


def _compiler():
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return shlex.split(cxx)


def _command(torch, output):
    from torch.utils import cpp_extension
    includes = [sysconfig.get_paths()["include"], _HERE] + cpp_extension.include_paths()
    libraries = cpp_extension.library_paths()
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    return (_compiler() + ["-O2", "-std=c++17", "-shared", "-fPIC", "-w",
                           f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
            + [f"-I{d}" for d in includes] + [_SOURCE, "-o", output]
            + [f"-L{d}" for d in libraries] + [f"-Wl,-rpath,{d}" for d in libraries]
            + ["-lc10", "-ltorch_cpu", "-ltorch_python"])


def _key(torch, command):
    h = hashlib.sha256()
    for path in (_SOURCE, _HEADER):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(repr((torch.__version__, torch.__file__, sys.version, sys.implementation.cache_tag,
                   command[:1])).encode())
    return h.hexdigest()[:20]


def _load(path):
    loader = importlib.machinery.ExtensionFileLoader("gdcore._torch_reads", path)
    spec = importlib.util.spec_from_file_location("gdcore._torch_reads", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.TABLE


def table():
    """The reader's capsule (compiling it first if needed), or None."""
    global STATUS
    if os.environ.get("GDCORE_TORCH_READS", "1") == "0":
        STATUS = "off (GDCORE_TORCH_READS=0)"
        return None
    try:
        import fcntl
        import torch
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        directory = _cache_dir()
        os.makedirs(directory, exist_ok=True)
        probe = _command(torch, "OUT")
        name = f"torch_reads-{_key(torch, probe)}{suffix}"
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            with open(os.path.join(directory, name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)    # another process may be compiling it
                if not os.path.exists(path):
                    fd, temporary = tempfile.mkstemp(suffix=suffix, dir=directory)
                    os.close(fd)
                    try:
                        done = subprocess.run(_command(torch, temporary), capture_output=True,
                                              text=True, timeout=300)
                        if done.returncode != 0:
                            STATUS = f"compile failed: {done.stderr.strip()[-2000:]}"
                            return None
                        os.replace(temporary, path)
                    finally:
                        if os.path.exists(temporary):
                            os.unlink(temporary)
        capsule = _load(path)
        STATUS = f"loaded {path}"
        return capsule
    except Exception as e:                   # no compiler, headers, fcntl, ...: the slower reads
        STATUS = f"unavailable: {type(e).__name__}: {e}"
        return None
