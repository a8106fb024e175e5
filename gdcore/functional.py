"""Stateless, in-place optimizer steps on explicit buffers.

Each function updates ``param`` and its state in place, from ``grad``,
exactly as one step of the torch.optim class of the same name.  State
buffers have torch's names (exp_avg, exp_avg_sq, ...) and the param's dtype
and shape; per-param scalar state (NAdam's mu_product, ASGD's eta and mu)
is a 0-d float32 or float64 array, as torch keeps it in a 0-d tensor;
hyperparameters are keyword-only; ``step`` is the 1-based step number where
the math needs it.

The ``*_multi`` forms take lists of buffers (``steps``: an int or one per
buffer) and update them all in one C call, bitwise equal to one call per
buffer.

Every function here is built from its declaration in gdcore/family.py, with
a real signature and the declaration's docstring.
"""
from gdcore import _core
from gdcore.family import FAMILY, functional_parameters

__all__ = []


def _doc_args(decl, multi):
    """The Args section: buffers, then hyperparameters with defaults."""
    lines = []
    param = "params" if multi else "param"
    what = "lists of " if multi else ""
    lines.append(f"    {param}: {what}float32, float64, bfloat16 (ml_dtypes) or float16 "
                 "C-contiguous ndarray, updated in place.")
    lines.append(f"    {'grads' if multi else 'grad'}: {what}array-like of exactly the "
                 "param's shape and dtype.")
    for s in decl.state:
        name = s.plural if multi else s.name
        when = f"; required iff {s.needs}" if s.needs else ""
        lines.append(f"    {name}: {what}state buffer of the param's shape and dtype (or "
                     f"float32 for a 16-bit param){when}.")
    for s in decl.scalars:
        name = s.plural if multi else s.name
        lines.append(f"    {name}: {what}0-d float32/float64 ndarray, updated in place.")
    if decl.step == "required":
        lines.append(f"    {'steps' if multi else 'step'}: the 1-based number of this step"
                     + (" (an int, or one per buffer)." if multi else "."))
    elif decl.step == "first":
        lines.append(f"    {'steps' if multi else 'step'}: the 1-based step number; needed "
                     "when a state buffer is in use (step 1 initialises it), and with "
                     "rounding='stochastic'.")
    else:
        lines.append(f"    {'steps' if multi else 'step'}: the 1-based step number; needed "
                     "only with rounding='stochastic' (it keys the random bits).")
    for h in decl.hyper:
        if h.init_only or h.fixed:
            continue
        names = " / ".join(h.functional_names())
        lines.append(f"    {names} (default {h.default!r}): {h.doc}.")
    lines.append("    rounding (default 'nearest'): how a 16-bit param is stored after the "
                 "update: 'nearest' (even), 'stochastic' or 'kahan'; float32/float64 "
                 "params take 'nearest'.")
    lines.append("    seed (default 0): 'stochastic': the random stream's seed, 0 <= seed "
                 "< 2**64.")
    if multi:
        lines.append("    compensations: 'kahan': one buffer per param, of its dtype and "
                     "shape, starting at zero, updated in place.")
        lines.append("    streams: 'stochastic': one int per param naming its random "
                     "stream (default: its position in params); the bits of an element "
                     "depend on (seed, stream, step, its index).")
    else:
        lines.append("    compensation: 'kahan': a buffer of the param's dtype and shape, "
                     "starting at zero, updated in place.")
        lines.append("    stream (default 0): 'stochastic': the param's random stream "
                     "(pass stream=j to get the bits of a _multi call's j-th param).")
    return "\n".join(lines)


def _docstring(decl, multi):
    name = decl.function
    if multi:
        head = (f"`{name}` over many buffers in one C call (GIL released once), bitwise "
                f"equal to calling `{name}` on each buffer in turn.\n\n")
    else:
        head = f"One in-place {decl.name} step, as torch.optim.{decl.name} computes it.\n\n"
    text = head + decl.summary + "\n\n.. math::\n" + "".join(
        "    " + line + "\n" for line in decl.math.strip("\n").splitlines())
    if decl.notes:
        text += "\n" + decl.notes + "\n"
    return text + "\nArgs:\n" + _doc_args(decl, multi) + "\n"


def _build(decl, multi):
    """One functional step, compiled with exec from the declaration's
    parameter list (so that inspect.signature and help() show the real
    parameters; the type stub gdcore/functional.pyi has the same list)."""
    name = decl.function + ("_multi" if multi else "")
    one = (lambda x: x.plural) if multi else (lambda x: x.name)
    hyper = []
    for h in decl.hyper:
        if not (h.init_only or h.fixed):
            hyper.append(f"{h.name!r}: ({h.c[0]}, {h.c[1]})" if h.split else
                         f"{h.name!r}: {h.name}")
    states = "(" + "".join(f"{one(s)}, " for s in decl.state) + ")"
    scalars = "(" + "".join(f"{one(s)}, " for s in decl.scalars) + ")"
    step = "steps" if multi else "step"
    first = "params, grads" if multi else "param, grad"
    storage = "rounding, seed, " + ("compensations, streams" if multi else
                                    "compensation, stream")
    source = (f"def {name}({', '.join(functional_parameters(decl, multi))}):\n"
              f"    _run(_spec, {not multi}, {first}, {states}, {scalars}, {step}, "
              f"{{{', '.join(hyper)}}}, {storage})\n")
    scope = {"_run": _core.run, "_spec": _core.SPECS[decl.name]}
    exec(compile(source, f"<gdcore.functional.{name}>", "exec"), scope)
    function = scope[name]
    function.__doc__ = _docstring(decl, multi)
    function.__module__ = __name__
    function.__qualname__ = name
    return function


for _decl in FAMILY:
    for _multi in (False, True):
        _function = _build(_decl, _multi)
        globals()[_function.__name__] = _function
        __all__.append(_function.__name__)
del _decl, _multi, _function
