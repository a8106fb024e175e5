"""Compile and load gdcore/_torch_reads.cpp against the installed torch.

gdcore.torch reads each param's grad and checks params and grads through
torch's C++ API when this module can provide it (see _torch_reads.cpp: a
few ns a tensor, against about 0.3 us through torch's Python-level C
functions).  torch's C++ ABI is that of the torch build, so the reader is
compiled on first use, with $CXX (else Python's C++ compiler, c++, g++ or
clang++) and torch's headers, into a cache directory keyed by everything
the binary depends on (the source, torch's build and location, the Python
ABI): ``$GDCORE_CACHE``, else ``$XDG_CACHE_HOME/gdcore``, else
``~/.cache/gdcore``.  A file lock makes concurrent processes (one per rank)
compile once; a failed compile is remembered (per compiler) so that they do
not each try again.  About 10 s, once per torch install.

``GDCORE_TORCH_READS=0`` turns the reader off (gdcore.torch then uses
torch's DLPack exchange table: the same checks, slower).  Any failure (no
compiler, no headers, a compile error, a load error) does the same; what
happened is kept in ``STATUS`` ("loaded (compiled) PATH", "loaded (cached)
PATH", "off ...", "compile failed ...", "unavailable: ...").
"""
import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

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
    """$CXX, else the first of Python's own C++ compiler, c++, g++ and
    clang++ that is on PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for cxx in (sysconfig.get_config_var("CXX"), "c++", "g++", "clang++"):
        if cxx and shutil.which(shlex.split(cxx)[0]):
            return shlex.split(cxx)
    raise FileNotFoundError("no C++ compiler found (set CXX)")


def _torch_dirs(torch):
    """torch's header and library directories (those of
    torch.utils.cpp_extension, which needs setuptools to import)."""
    root = os.path.dirname(os.path.abspath(torch.__file__))
    include = os.path.join(root, "include")
    return [include, os.path.join(include, "torch", "csrc", "api", "include")], \
        [os.path.join(root, "lib")]


def _command(torch, compiler, output):
    includes, libraries = _torch_dirs(torch)
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    return (compiler + ["-O2", "-std=c++20", "-shared", "-fPIC", "-w",
                        f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
            + [f"-I{d}" for d in [sysconfig.get_paths()["include"], _HERE] + includes]
            + [_SOURCE, "-o", output]
            + [f"-L{d}" for d in libraries] + [f"-Wl,-rpath,{d}" for d in libraries]
            + ["-lc10", "-ltorch_cpu", "-ltorch_python"]
            + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []))


def _digest(*parts):
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _key(torch):
    """What the binary depends on: the source, the torch build, the Python
    ABI (not the compiler: any of them builds the same ABI)."""
    sources = []
    for path in (_SOURCE, _HEADER):
        with open(path, "rb") as f:
            sources.append(hashlib.sha256(f.read()).hexdigest())
    built = os.stat(torch._C.__file__)         # a reinstall of the same version
    return _digest(sources, torch.__version__, getattr(torch.version, "git_version", None),
                   torch.__file__, built.st_size, built.st_mtime_ns, sys.version,
                   sys.implementation.cache_tag, sys.platform)


def _wait_for(lock, fcntl, seconds=600):
    """Take the exclusive lock on open file `lock`, waiting up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"another process held {lock.name} for {seconds} s")
            time.sleep(0.2)


def _load(path):
    loader = importlib.machinery.ExtensionFileLoader("gdcore._torch_reads", path)
    spec = importlib.util.spec_from_file_location("gdcore._torch_reads", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.TABLE


def _load_cached(path):
    global STATUS
    capsule = _load(path)
    STATUS = f"loaded (cached) {path}"
    return capsule


def table():
    """The reader's capsule (compiling it first if needed), or None."""
    global STATUS
    if os.environ.get("GDCORE_TORCH_READS", "1") == "0":
        STATUS = "off (GDCORE_TORCH_READS=0)"
        return None
    try:
        import torch
        directory = _cache_dir()
        name = f"torch_reads-{_key(torch)}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return _compile(torch, directory, name, path)
        return _load_cached(path)
    except Exception as e:                   # no compiler, headers, fcntl, ...: the slower reads
        STATUS = f"unavailable: {type(e).__name__}: {e}"
        return None


def _compile(torch, directory, name, path):
    """Compile, load and publish as `path`, under a lock (another process
    may be compiling it); the capsule, or None with STATUS set.  A failure
    to compile or load is remembered per compiler (the .failed file next
    to it, with the messages; delete it to try again)."""
    global STATUS
    import fcntl
    compiler = _compiler()
    failed = os.path.join(directory, f"{name}.{_digest(compiler)[:8]}.failed")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name + ".lock"), "w") as lock:
        _wait_for(lock, fcntl)
        if os.path.exists(path):                # the other process compiled it
            return _load_cached(path)
        if os.path.exists(failed):
            STATUS = f"compile failed before (see {failed}; delete it to try again)"
            return None
        fd, temporary = tempfile.mkstemp(suffix=importlib.machinery.EXTENSION_SUFFIXES[0],
                                         dir=directory)
        os.close(fd)
        try:
            done = subprocess.run(_command(torch, compiler, temporary), capture_output=True,
                                  text=True, timeout=300)
            why = None
            if done.returncode != 0:
                why = done.stderr.strip()[-2000:]
            else:
                try:
                    capsule = _load(temporary)      # published only if it loads
                except Exception as e:
                    why = f"the compiled module does not load: {type(e).__name__}: {e}"
            if why is not None:
                with open(failed, "w") as f:
                    f.write(f"{' '.join(done.args)}\n{done.stdout}{done.stderr}\n{why}\n")
                STATUS = f"compile failed: {why} (kept in {failed})"
                return None
            os.replace(temporary, path)
            STATUS = f"loaded (compiled) {path}"
            return capsule
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
