"""The implementations the benchmarks compare, each behind one interface:

    build(name, config, params, grads) -> step()   (or raise Unsupported)

`params`/`grads` are lists of NumPy arrays; every implementation works on
its own copies, keeps its own state, and has taken one warm-up step (so that
lazily created state exists) before `step` is returned.  Thread counts are
set by the caller (gdcore.set_num_threads, torch.set_num_threads).
"""
import math

import numpy as np

import gdcore
import gdcore.functional as F
from gdcore.family import BY_NAME
from gdcore.optim import _aligned_empty

try:
    import torch
except ImportError:                     # the report says which peers are absent
    torch = None


_placed = [0]


def aligned_copy(a):
    """A copy of `a` starting on a 64-byte boundary, as torch's CPU allocator
    places tensors (NumPy's allocator only guarantees 16 bytes, and a vector
    load that straddles two cache lines costs extra).  Large copies also go to
    a rotating offset within a 4 KiB page, 1,088 bytes after the previous
    one: arrays whose addresses agree below 4 KiB slow each other down (4K
    aliasing, see gdcore/optim.py), and where NumPy's allocator happens to put
    them would otherwise decide a run.  Every implementation gets such copies
    for its params and grads."""
    page_offset = None
    if a.nbytes >= 4096:
        _placed[0] += 1
        page_offset = _placed[0] * 1088 % 4096
    out = _aligned_empty(a.nbytes, page_offset).view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


class Unsupported(Exception):
    """This implementation has no variant for this optimizer/dtype."""


# ------------------------------------------------------------------ gdcore
def gdcore_class(name, config, params, grads):
    params = [aligned_copy(p) for p in params]
    opt = getattr(gdcore, name)(params, **config)
    opt.step(grads)
    return lambda: opt.step(grads)


def gdcore_functional(name, config, params, grads):
    """The *_multi functional form with explicitly held state, allocated
    from the optimizer's declaration (gdcore/family.py)."""
    decl = BY_NAME[name]
    values = {**decl.defaults(), **config}
    params = [aligned_copy(p) for p in params]
    args, named = [params, grads], {}
    for s in decl.state:
        if s.when is None or s.when(values):
            init = values[s.init] if isinstance(s.init, str) else s.init
            buffers = [aligned_copy(np.full_like(p, init)) for p in params]
            if s.when is None:
                args.append(buffers)
            else:
                named[s.plural] = buffers
    args += [[np.array(float(values[s.init] if isinstance(s.init, str) else s.init),
                       np.float32) for _ in params] for s in decl.scalars]
    for h in decl.hyper:
        if h.name in config and not h.init_only:
            named.update(zip(h.c, config[h.name]) if h.split else {h.name: config[h.name]})
    function = getattr(F, decl.function + "_multi")
    counter = [0]

    def step():
        counter[0] += 1
        if decl.step != "unused":
            named["steps"] = counter[0]
        function(*args, **named)
    step()
    return step


def gdcore_stream(name, params, grads):
    """Roofline probe: the same traffic as `name`, no arithmetic."""
    from bench.cases import TRAFFIC
    nread, nwrite = TRAFFIC[name]
    params = [aligned_copy(p) for p in params]
    states = [[aligned_copy(np.zeros_like(p)) for p in params] for _ in range(nread - 2)]
    step = lambda: gdcore._core.stream(params, grads, states, nread=nread, nwrite=nwrite)  # noqa
    step()
    return step


# ------------------------------------------------------------------- NumPy
HAND_WRITTEN_NUMPY = {"SGD", "Adagrad", "RMSprop", "Adam", "AdamW"}


def _reference_steps():
    """tests/reference.py (whole-array NumPy updates, written from the math),
    when the source tree is at hand; None in an installed package."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tests", "reference.py")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("gdcore_bench_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STEPS


def numpy_naive(name, config, params, grads):
    """The obvious NumPy expression of each update: temporaries everywhere.
    For the optimizers without a hand-written version here, the test
    suite's NumPy reference (tests/reference.py, run in the buffers' own
    dtype), which is the same kind of code."""
    if name not in HAND_WRITTEN_NUMPY:
        steps = _reference_steps()
        if steps is None:
            raise Unsupported("no NumPy version outside the source tree")
        params = [aligned_copy(p) for p in params]
        states = [{} for _ in params]

        def step():
            for p, g, s in zip(params, grads, states):
                steps[name](p, s, g, **config)
        step()
        return step
    params = [aligned_copy(p) for p in params]
    state = [dict() for _ in params]
    t = [0]
    lr = config["lr"]

    def step():
        t[0] += 1
        for p, g, s in zip(params, grads, state):
            if name == "SGD":
                mu = config["momentum"]
                s["buf"] = g.copy() if "buf" not in s else mu * s["buf"] + g
                p -= lr * s["buf"]
            elif name == "Adagrad":
                s["sum"] = s.get("sum", 0) + g * g
                p -= lr * g / (np.sqrt(s["sum"]) + 1e-10)
            elif name == "RMSprop":
                s["sq"] = 0.99 * s.get("sq", 0) + 0.01 * g * g
                p -= lr * g / (np.sqrt(s["sq"]) + 1e-8)
            else:
                if name == "AdamW":
                    p *= 1 - lr * 1e-2
                s["m"] = 0.9 * s.get("m", 0) + 0.1 * g
                s["v"] = 0.999 * s.get("v", 0) + 0.001 * g * g
                m_hat = s["m"] / (1 - 0.9 ** t[0])
                v_hat = s["v"] / (1 - 0.999 ** t[0])
                p -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    step()
    return step


def numpy_inplace(name, config, params, grads):
    """The best plain-NumPy version: in-place ufuncs with out=, one scratch
    buffer per param, per-step scalars folded."""
    if name not in HAND_WRITTEN_NUMPY:
        raise Unsupported(f"no in-place NumPy version of {name}")
    params = [aligned_copy(p) for p in params]
    scratch = [np.empty_like(p) for p in params]
    s1 = [aligned_copy(np.zeros_like(p)) for p in params]
    s2 = [aligned_copy(np.zeros_like(p)) for p in params]
    t = [0]
    lr = config["lr"]

    def step():
        t[0] += 1
        for p, g, tmp, a, b in zip(params, grads, scratch, s1, s2):
            if name == "SGD":
                a *= config["momentum"]
                a += g
                np.multiply(a, -lr, out=tmp)
                p += tmp
            elif name in ("Adagrad", "RMSprop"):
                np.multiply(g, g, out=tmp)
                if name == "RMSprop":
                    a *= 0.99
                    tmp *= 0.01
                a += tmp
                np.sqrt(a, out=tmp)
                tmp += 1e-10 if name == "Adagrad" else 1e-8
                np.divide(g, tmp, out=tmp)
                tmp *= -lr
                p += tmp
            else:
                bc1, bc2 = 1 - 0.9 ** t[0], 1 - 0.999 ** t[0]
                if name == "AdamW":
                    p *= 1 - lr * 1e-2
                a *= 0.9
                np.multiply(g, 0.1, out=tmp)
                a += tmp
                b *= 0.999
                np.multiply(g, g, out=tmp)
                tmp *= 0.001
                b += tmp
                np.sqrt(b, out=tmp)
                tmp *= 1 / math.sqrt(bc2)
                tmp += 1e-8
                np.divide(a, tmp, out=tmp)
                tmp *= -lr / bc1
                p += tmp
    step()
    return step


# ------------------------------------------------------------------- torch
TORCH_FUSED_CPU = {"SGD", "Adagrad", "Adam", "AdamW"}


def _torch(variant):
    def build(name, config, params, grads):
        if torch is None:
            raise Unsupported("torch is not installed")
        if variant == "fused" and name not in TORCH_FUSED_CPU:
            raise Unsupported(f"torch has no fused CPU {name}")
        tensors = [torch.from_numpy(aligned_copy(p)).requires_grad_() for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(aligned_copy(g))
        flags = {"forloop": dict(foreach=False), "foreach": dict(foreach=True),
                 "fused": dict(fused=True)}[variant]
        opt = getattr(torch.optim, name)(tensors, **config, **flags)
        opt.step()
        return opt.step
    build.__name__ = f"torch_{variant}"
    return build


torch_forloop = _torch("forloop")
torch_foreach = _torch("foreach")
torch_fused = _torch("fused")


def gdcore_torch(name, config, params, grads):
    """gdcore.torch.X, the torch.optim subclass, over torch tensors."""
    if torch is None:
        raise Unsupported("torch is not installed")
    import gdcore.torch as gt
    tensors = [torch.from_numpy(aligned_copy(p)).requires_grad_() for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(aligned_copy(g))
    opt = getattr(gt, name)(tensors, **config)
    opt.step()
    return opt.step


# --------------------------------------------------------------- DeepSpeed
def deepspeed_available():
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: F401
        return True, ""
    except Exception as exc:                      # ImportError, or its JIT build failing
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def deepspeed_cpu(name, config, params, grads):
    if torch is None or name not in ("Adam", "AdamW", "Adagrad"):
        raise Unsupported(f"DeepSpeed has no CPU {name}")
    ok, why = deepspeed_available()
    if not ok:
        raise Unsupported(why)
    tensors = [torch.from_numpy(aligned_copy(p)).requires_grad_() for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(aligned_copy(g))
    if name == "Adagrad":
        from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
        opt = DeepSpeedCPUAdagrad(tensors, lr=config["lr"])
    else:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        opt = DeepSpeedCPUAdam(tensors, lr=config["lr"], adamw_mode=name == "AdamW",
                               weight_decay=1e-2 if name == "AdamW" else 0.0)
    try:
        opt.step()
    except RuntimeError as exc:       # e.g. float64 is not supported by its kernels
        raise Unsupported(f"DeepSpeed: {str(exc).splitlines()[0]}") from None
    return opt.step


IMPLEMENTATIONS = {
    "gdcore": gdcore_class,
    "gdcore_functional": gdcore_functional,
    "gdcore_torch": gdcore_torch,
    "numpy_naive": numpy_naive,
    "numpy_inplace": numpy_inplace,
    "torch_forloop": torch_forloop,
    "torch_foreach": torch_foreach,
    "torch_fused": torch_fused,
    "deepspeed": deepspeed_cpu,
}
NUMPY = ("numpy_naive", "numpy_inplace")
TORCH = ("torch_forloop", "torch_foreach", "torch_fused")


def set_threads(n):
    gdcore.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
