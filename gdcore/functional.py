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
from gdcore.family import FAMILY

__all__ = []


def _doc_args(decl, multi):
    """The Args section: buffers, then hyperparameters with defaults."""
    lines = []
    param = "params" if multi else "param"
    what = "lists of " if multi else ""
    lines.append(f"    {param}: {what}float32/float64 C-contiguous ndarray, updated in place.")
    lines.append(f"    {'grads' if multi else 'grad'}: {what}array-like of exactly the "
                 "param's shape and dtype.")
    for s in decl.state:
        name = s.plural if multi else s.name
        when = f"; required iff {s.needs}" if s.needs else ""
        lines.append(f"    {name}: {what}state buffer like the param{when}.")
    for s in decl.scalars:
        name = s.plural if multi else s.name
        lines.append(f"    {name}: {what}0-d float32/float64 ndarray, updated in place.")
    if decl.step == "required":
        lines.append(f"    {'steps' if multi else 'step'}: the 1-based number of this step"
                     + (" (an int, or one per buffer)." if multi else "."))
    elif decl.step == "first":
        lines.append(f"    {'steps' if multi else 'step'}: the 1-based step number; needed "
                     "when a state buffer is in use (step 1 initialises it).")
    for h in decl.hyper:
        if h.init_only or h.fixed:
            continue
        names = " / ".join(h.functional_names())
        lines.append(f"    {names} (default {h.default!r}): {h.doc}.")
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
    """Source of one functional step, compiled with exec (so that
    inspect.signature and help() show the real parameters)."""
    name = decl.function + ("_multi" if multi else "")
    plural = (lambda x: x.plural) if multi else (lambda x: x.name)
    required = [plural(s) for s in decl.state if s.when is None]
    optional = [plural(s) for s in decl.state if s.when is not None]
    scalars = [plural(s) for s in decl.scalars]
    positional = (["params", "grads"] if multi else ["param", "grad"]) + required + scalars
    positional += [f"{n}=None" for n in optional]
    keywords = []
    step_name = "steps" if multi else "step"
    if decl.step == "required":
        keywords.append(step_name)
    elif decl.step == "first":
        keywords.append(f"{step_name}=None")
    hyper_items = []
    for h in decl.hyper:
        if h.init_only or h.fixed:
            continue
        if h.kind == "pair" and h.split:
            keywords += [f"{c}={d!r}" for c, d in zip(h.c, h.default)]
            hyper_items.append(f"{h.name!r}: ({h.c[0]}, {h.c[1]})")
        else:
            keywords.append(f"{h.name}={h.default!r}")
            hyper_items.append(f"{h.name!r}: {h.name}")
    by_slot = {plural(s): plural(s) for s in decl.state}
    states = "(" + "".join(f"{by_slot[plural(s)]}, " for s in decl.state) + ")"
    scalar_args = "(" + "".join(f"{n}, " for n in scalars) + ")"
    step_arg = step_name if decl.step != "unused" else "None"
    first = "params, grads" if multi else "param, grad"
    source = (f"def {name}({', '.join(positional)}, *, {', '.join(keywords)}):\n"
              f"    _run(_spec, {not multi}, {first}, {states}, {scalar_args}, {step_arg}, "
              f"{{{', '.join(hyper_items)}}})\n")
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
