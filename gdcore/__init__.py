"""gdcore: compiled, in-place optimizer steps for NumPy buffers.

Two layers over the same C kernels:
  gdcore.functional   stateless steps on explicit buffers (sgd, adam, ...)
  gdcore.SGD, ...     optimizer classes (every torch.optim per-element
                      optimizer: SGD, Adagrad, RMSprop, Adam, AdamW,
                      Adadelta, Adamax, ASGD, NAdam, RAdam, Rprop) with torch.optim's names, defaults,
                      param groups, state and state_dict
"""
import os as _os

from gdcore import functional
from gdcore._core import build_info, get_num_threads, set_num_threads
from gdcore.family import FAMILY as _FAMILY
from gdcore.optim import (SGD, ASGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam,  # noqa: F401
                          Optimizer, RAdam, RMSprop, Rprop)

__all__ = [_decl.name for _decl in _FAMILY] + [
    "Optimizer", "functional", "set_num_threads", "get_num_threads", "build_info",
    "get_include", "capi_options"]
__version__ = "0.1.0"


def get_include():
    """The directory of gdcore_capi.h, the C API of gdcore's kernels for
    C and Cython extensions (see gdcore/capi.pxd and README, "Embedding")."""
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "include")


def capi_options(name, **hyperparameters):
    """What a C API call of optimizer `name` ("Adam", "SGD", ...) needs for
    these hyperparameters (torch's defaults for the others, checked as torch
    checks them): (kernel, options, slots) -- the kernel index, the options
    as a float64 array in the kernel's order, and the names of the state
    buffers the step uses, in gd_buffer.state order.  The C side also needs
    the 1-based step number in gd_buffer.step."""
    from gdcore._core import SPECS
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown optimizer {name!r}; one of {sorted(SPECS)}")
    unknown = sorted(set(hyperparameters) - set(spec.defaults))
    if unknown:
        raise TypeError(f"{name} has no hyperparameter {unknown[0]!r}; it has "
                        f"{sorted(spec.defaults)}")
    options, slots = spec.kernel_options({**spec.defaults, **hyperparameters})
    return spec.kernel, options, slots


def _threads_from_environment():
    """GDCORE_NUM_THREADS, else the first number of OMP_NUM_THREADS (the
    variable most CPU numeric libraries read), else the CPUs this process may
    run on; fixed at import (torch.set_num_threads never changes it)."""
    value = _os.environ.get("GDCORE_NUM_THREADS", "").strip()
    if not value:
        omp = _os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        if omp.isdigit() and int(omp) >= 1:
            set_num_threads(int(omp))
        else:
            try:
                set_num_threads(len(_os.sched_getaffinity(0)))
            except AttributeError:                  # not on Linux
                set_num_threads(_os.cpu_count() or 1)
        return
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"GDCORE_NUM_THREADS must be a whole number >= 1, got {value!r}")
    set_num_threads(n)



def _check_spin_from_environment():
    """GDCORE_SPIN_US (read by the C runtime when it loads): how long an idle
    worker spins before it sleeps, a whole number of microseconds in
    [0, 10000]; the runtime ignores anything else, so refuse it here."""
    value = _os.environ.get("GDCORE_SPIN_US")
    if value is not None and not (value.isascii() and value.isdigit() and int(value) <= 10000):
        raise ValueError("GDCORE_SPIN_US must be a whole number of microseconds in "
                         f"[0, 10000], got {value!r}")


_check_spin_from_environment()
_threads_from_environment()
