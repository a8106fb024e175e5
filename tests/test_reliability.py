"""Reliability of the NumPy API (issue 9): memory safety at the Python
boundary (section 1), one semantics whatever path a step takes (2), copies
and pickles (4), and bad input (6): every bad input raises TypeError or
ValueError whose message names the argument, and nothing is modified.

Class-API cases run on both paths of a step:
  "plan"     every param has state, so the cached `_core.Plan` steps;
  "general"  the last param never gets a grad, so it never has state and
             no plan is ever built: every step is the general path.
The first three params (two groups) have the same history on both paths, so
their results can be compared across paths.

Cases that could crash the interpreter (use-after-free, stale pointers,
threads) run in a subprocess, so that a segfault fails the test instead of
killing pytest.  gdcore.torch is not covered here.
"""
import copy
import numbers
import os
import signal
import pickle
import re
import subprocess
import sys
import textwrap
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import gdcore
from conftest import CONFIGS
from gdcore.family import BY_NAME, FAMILY
from test_consistency import call_functional, functional_args

f32, f64 = np.float32, np.float64
NAMES = [decl.name for decl in FAMILY]
PATHS = ["plan", "general"]
GDCORE_DIR = os.path.dirname(os.path.abspath(gdcore.__file__))
FORBIDDEN = (OverflowError, KeyError, AttributeError, IndexError)
REENTRANT = r"(?i)re-?entr|concurren"

# a (5,) f64, b (2, 3) f32 | c (5,) f64, d (3,) f32   (two groups)
SHAPES = [((5,), f64), ((2, 3), f32), ((5,), f64), ((3,), f32)]


# ------------------------------------------------------------------ helpers
def hungry(decl):
    """The test configuration that uses the most state."""
    return max(CONFIGS[decl.name],
               key=lambda c: len(decl.state_in_use({**decl.defaults(), **c})))


def first_slot(decl):
    """(name, plural) of the first state buffer the hungry config uses."""
    name = decl.state_in_use({**decl.defaults(), **hungry(decl)})[0]
    return name, next(s.plural for s in decl.state if s.name == name)


def state_label(k, name, plural):
    """A message naming state entry `name` of params[k] (either spelling)."""
    return rf"state\[{k}\]\['{name}'\]|{plural}\[{k}\]"


STEP0 = r"state\[0\]\['step'\]|state\[0\]\D.*'step'"


def both(*patterns):
    """A regex matching text that contains every pattern."""
    return "".join(f"(?=.*(?:{p}))" for p in patterns)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]


def make_grads(params, path, t):
    rng = np.random.default_rng(1000 + t)
    grads = [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]
    if path == "general":
        grads[3] = None                         # d never has state: no plan
    return grads


def setup(name, path, steps=2, config=None):
    """An optimizer over a, b | c, d (two groups), stepped `steps` times."""
    decl = BY_NAME[name]
    config = hungry(decl) if config is None else config
    params = make_params()
    opt = getattr(gdcore, name)([{"params": params[:2]}, {"params": params[2:]}], **config)
    for t in range(steps):
        opt.step(make_grads(params, path, t))
    if steps:
        assert_path(opt, path)
    return opt, params


def assert_path(opt, path):
    if path == "plan":
        assert opt._plan is not None, "setup: no plan was cached; the case would not test it"
    else:
        assert opt._plan is None, "setup: a plan was cached on the general variant"


def same(x, y):
    """Deep, bitwise equality (NaN equals NaN; numbers by value and kind)."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and x.dtype == y.dtype and x.shape == y.shape
                and np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes())
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
    numeric = (numbers.Number, np.generic)
    if isinstance(x, numeric) and isinstance(y, numeric) \
            and not isinstance(x, (bool, np.bool_)) and not isinstance(y, (bool, np.bool_)):
        integral = (numbers.Integral, np.integer)
        if isinstance(x, integral) != isinstance(y, integral):
            return False
        return bool(x == y) or (x != x and y != y)
    return type(x) is type(y) and (x is y or bool(x == y))


def state_of(opt, p):
    try:
        return copy.deepcopy(opt.state.get(p))
    except Exception as exc:            # state replaced by something odd
        return f"<{type(exc).__name__}>"


def values(opt, arrays):
    """Everything observable about `arrays` in opt, by value."""
    try:
        n = len(opt.state)
    except Exception:
        n = None
    return [(p.copy(), state_of(opt, p)) for p in arrays], n


def snapshot(opt, params):
    """What must not change when a call raises: every param (values and
    which arrays the groups hold), every state entry (arrays, step counters,
    scalar state), the hyperparameters, the number of state entries."""
    groups = opt.param_groups
    held = [list(g["params"]) if isinstance(g.get("params"), (list, tuple)) else g.get("params")
            for g in groups]
    extra = [p for lst in held if isinstance(lst, list) for p in lst
             if isinstance(p, np.ndarray) and not any(p is q for q in params)]
    return dict(arrays=params + extra, values=values(opt, params + extra),
                held=held, ngroups=len(groups),
                hyper=[copy.deepcopy({k: v for k, v in g.items() if k != "params"})
                       for g in groups])


def assert_unchanged(before, opt):
    now = values(opt, before["arrays"])
    for k, ((p0, s0), (p1, s1)) in enumerate(zip(before["values"][0], now[0])):
        assert same(p0, p1), f"param {k} was modified by a call that raised"
        assert same(s0, s1), f"state of param {k} was modified by a call that raised:\n" \
                             f"before {s0}\nafter  {s1}"
    assert before["values"][1] == now[1], "state entries were added or removed"
    assert len(opt.param_groups) == before["ngroups"], "param groups were added or removed"
    for g, held, hyper in zip(opt.param_groups, before["held"], before["hyper"]):
        params = g.get("params")
        if isinstance(held, list):
            assert isinstance(params, list) and len(params) == len(held) and \
                all(p is q for p, q in zip(params, held)), "a group's params changed"
        assert same({k: v for k, v in g.items() if k != "params"}, hyper), \
            "hyperparameters changed"


def expect_error(call, exc, fragment):
    """call() must raise `exc` (TypeError and/or ValueError; never
    OverflowError, KeyError, AttributeError, IndexError) with a message
    matching `fragment` (a regex naming the argument)."""
    names = "/".join(e.__name__ for e in (exc if isinstance(exc, tuple) else (exc,)))
    try:
        call()
    except Exception as e:                          # noqa: BLE001
        got = f"{type(e).__name__}: {e}"
        assert isinstance(e, exc) and not isinstance(e, FORBIDDEN), \
            f"expected {names} naming /{fragment}/, got {got}"
        assert re.search(fragment, str(e), re.S), \
            f"message does not name the argument (/{fragment}/): {got}"
        return e
    pytest.fail(f"did not raise (expected {names} naming /{fragment}/)")


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def frozen(a):
    a.flags.writeable = False


# ======================================================= section 6: classes
# Bad hyperparameter values: the full list where a value is converted (the
# constructor, the functional API), the first two (a wrong type, a number
# too large for a double) where only the path around the conversion differs.
BAD_REAL = [("'0.1'", "0.1", TypeError), ("10**400", 10**400, (TypeError, ValueError)),
            ("None", None, TypeError), ("array of 2", np.array([0.1, 0.2]), TypeError),
            ("complex", 0.1 + 0j, TypeError)]
BAD_PAIR = [("one value", (0.5,), ValueError), ("10**400 inside", (0.5, 10**400),
                                                  (TypeError, ValueError)),
            ("not a pair", 0.5, (TypeError, ValueError)), ("string inside", ("a", 0.5), TypeError),
            ("None", None, (TypeError, ValueError)), ("three values", (0.3, 0.5, 0.7), ValueError)]


def bad_hyper_values(decl, first=None):
    """(hyper name, label, bad value, exception) for every settable hyper."""
    for h in decl.hyper:
        if h.fixed:
            continue
        table = BAD_REAL if h.kind == "real" else BAD_PAIR if h.kind == "pair" else []
        for label, value, exc in table[:first]:
            yield h.name, label, value, exc


CONSTRUCTION = [pytest.param(decl.name, h, value, exc, id=f"{decl.name}-{h}={label}")
                for decl in FAMILY for h, label, value, exc in bad_hyper_values(decl)]


@pytest.mark.parametrize("name,h,value,exc", CONSTRUCTION)
def test_constructor_rejects_bad_hyperparameter_naming_it(name, h, value, exc):
    p = np.linspace(-1, 1, 5)
    cls = getattr(gdcore, name)
    expect_error(lambda: cls([p], **{h: value}), exc, rf"\b{h}\b")
    np.testing.assert_array_equal(p, np.linspace(-1, 1, 5))


ADD_GROUP = [pytest.param(decl.name, h, value, exc, path, id=f"{decl.name}-{path}-{h}={label}")
             for decl in FAMILY for h, label, value, exc in bad_hyper_values(decl, first=2)
             for path in PATHS]


@pytest.mark.parametrize("name,h,value,exc,path", ADD_GROUP)
def test_failed_add_param_group_changes_nothing(name, h, value, exc, path):
    opt, params = setup(name, path)
    before = snapshot(opt, params)
    new = np.ones(3)
    expect_error(lambda: opt.add_param_group({"params": [new], h: value}), exc, rf"\b{h}\b")
    assert_unchanged(before, opt)
    opt.step(make_grads(params, path, 2))       # still steps the old groups


def class_edit_cases(decl):
    """(id, edit, exception, fragment): edit(opt, params, grads) changes the
    optimizer (or the grads of the next step) in a way the next step must
    reject, naming what is wrong, having changed nothing."""
    X, XP = first_slot(decl)
    X0 = state_label(0, X, XP)

    def set_state(key, value):
        def edit(opt, ps, grads):
            opt.state[ps[0]][key] = value() if callable(value) else value
        return edit

    def change_state(key, fn):
        def edit(opt, ps, grads):
            fn(opt.state[ps[0]][key])
        return edit

    def replace_state(key, fn):
        def edit(opt, ps, grads):
            opt.state[ps[0]][key] = fn(opt.state[ps[0]][key], ps)
        return edit

    if decl.counts_steps:
        for label, value, exc in [("-1", -1, ValueError), ("2.5", 2.5, (TypeError, ValueError)),
                                  ("nan", float("nan"), (TypeError, ValueError)),
                                  ("2**63", 2**63, ValueError),
                                  ("2**63-1 (next overflows)", 2**63 - 1, ValueError),
                                  ("'3'", "3", TypeError), ("None", None, TypeError),
                                  ("[3]", [3], TypeError)]:
            yield f"state step={label}", set_state("step", value), exc, STEP0

        def del_step(opt, ps, grads):
            del opt.state[ps[0]]["step"]
        yield "state step deleted", del_step, (TypeError, ValueError), STEP0

    yield f"{X} read-only copy", replace_state(X, lambda a, ps: readonly(a)), ValueError, X0
    yield f"{X} made read-only in place", change_state(X, frozen), ValueError, X0
    yield f"{X} wrong dtype", replace_state(X, lambda a, ps: a.astype(f32)), TypeError, X0
    yield f"{X} dtype changed in place", change_state(X, lambda a: setattr(a, "dtype", np.int64)), \
        TypeError, X0
    yield f"{X} wrong shape", replace_state(X, lambda a, ps: np.zeros(6)), ValueError, X0
    yield f"{X} reshaped in place", change_state(X, lambda a: setattr(a, "shape", (5, 1))), \
        ValueError, X0
    yield f"{X} a list", replace_state(X, lambda a, ps: a.tolist()), TypeError, X0
    yield f"{X} not contiguous", replace_state(X, lambda a, ps: np.zeros(10)[::2]), ValueError, X0
    yield f"{X} is the param", replace_state(X, lambda a, ps: ps[0]), ValueError, \
        both("overlap|same", X0)
    yield f"{X} is params[2]", replace_state(X, lambda a, ps: ps[2]), ValueError, \
        both("overlap|same", X0)
    for s in decl.scalars:
        Y0 = state_label(0, s.name, s.plural)
        yield f"{s.name} a float", replace_state(s.name, lambda a, ps: float(a)), TypeError, Y0
        yield f"{s.name} int array", replace_state(s.name, lambda a, ps: np.array(1)), TypeError, Y0
        yield f"{s.name} shape (1,)", replace_state(s.name, lambda a, ps: a.reshape(1).copy()), \
            TypeError, Y0
        yield f"{s.name} read-only copy", replace_state(s.name, lambda a, ps: readonly(a)), \
            ValueError, Y0
        yield f"{s.name} made read-only in place", change_state(s.name, frozen), ValueError, Y0

    def state_entry(value):
        def edit(opt, ps, grads):
            opt.state[ps[0]] = value
        return edit
    yield "state entry a list", state_entry(["step", "exp_avg"]), TypeError, r"state\[0\]"
    yield "state entry a tuple", state_entry(()), TypeError, r"state\[0\]"

    # hyperparameters of group 1 (c, d), edited as a schedule would
    def set_group(key, value):
        def edit(opt, ps, grads):
            opt.param_groups[1][key] = value
        return edit
    for h, label, value, exc in bad_hyper_values(decl, first=2):
        yield f"group {h}={label}", set_group(h, value), exc, rf"\b{h}\b"
    for h in decl.hyper:
        def delete(opt, ps, grads, h=h.name):
            del opt.param_groups[1][h]
        yield f"group {h.name} deleted", delete, (TypeError, ValueError), rf"\b{h.name}\b"

    # group 1's params list edited (c is params[2])
    def set_param(value, grad=None):
        def edit(opt, ps, grads):
            opt.param_groups[1]["params"][0] = value(ps)
            if grad is not None:
                grads[2] = grad(ps)
        return edit
    P2_P0 = both(r"params\[2\]", r"params\[0\]")
    yield "group params: c replaced by a", set_param(lambda ps: ps[0]), ValueError, P2_P0
    yield "group params: c replaced by a view of a", set_param(lambda ps: ps[0][:]), ValueError, \
        P2_P0
    yield "group params: c replaced by int32", set_param(
        lambda ps: np.ones(5, np.int32), lambda ps: np.ones(5, np.int32)), TypeError, \
        r"params\[2\]"
    yield "group params: c replaced by read-only", set_param(lambda ps: readonly(ps[2])), \
        ValueError, r"params\[2\]"
    yield "group params: c replaced by a list", set_param(lambda ps: ps[2].tolist()), TypeError, \
        r"params\[2\]"

    def set_params(value):
        def edit(opt, ps, grads):
            opt.param_groups[1]["params"] = value(ps)
        return edit
    G1 = r"param_groups\[1\]"
    yield "group params an ndarray", set_params(lambda ps: ps[2]), TypeError, G1
    yield "group params None", set_params(lambda ps: None), TypeError, G1
    yield "group params a set", set_params(lambda ps: {id(p) for p in ps[2:]}), TypeError, G1

    def del_params(opt, ps, grads):
        del opt.param_groups[1]["params"]
    yield "group params deleted", del_params, (TypeError, ValueError), G1

    # params changed in place
    def param_edit(fn, grad=None):
        def edit(opt, ps, grads):
            fn(ps[0])
            if grad is not None:
                grads[0] = grad(ps[0])
        return edit
    yield "a made read-only", param_edit(frozen), ValueError, r"params\[0\]"
    yield "a dtype changed in place (grad matches)", param_edit(
        lambda p: setattr(p, "dtype", np.int64), lambda p: np.ones(5, np.int64)), TypeError, \
        r"params\[0\]"
    yield "a reshaped in place (grad matches)", param_edit(
        lambda p: setattr(p, "shape", (5, 1)), lambda p: np.ones((5, 1))), ValueError, X0


CLASS_EDITS = [pytest.param(decl.name, path, edit, exc, fragment, id=f"{decl.name}-{path}-{label}")
               for decl in FAMILY for label, edit, exc, fragment in class_edit_cases(decl)
               for path in PATHS]


@pytest.mark.parametrize("name,path,edit,exc,fragment", CLASS_EDITS)
def test_step_after_bad_edit_rejects_naming_it_and_changes_nothing(name, path, edit, exc,
                                                                   fragment):
    opt, params = setup(name, path)
    grads = make_grads(params, path, 2)
    edit(opt, params, grads)
    assert_path(opt, path)
    before = snapshot(opt, params)
    expect_error(lambda: opt.step(grads), exc, fragment)
    assert_unchanged(before, opt)


# ---------------------------------------------------------- load_state_dict
def load_cases(decl):
    """(id, mutate(sd), exception, fragment): a state_dict() edited so that
    load_state_dict must reject it at load time."""
    X, XP = first_slot(decl)
    X0 = rf"state\[0\]\['{X}'\]"

    def entry(fn):
        def mutate(sd):
            fn(sd["state"][0])
        return mutate

    def setitem(key, value):
        return entry(lambda e: e.__setitem__(key, value))

    if decl.counts_steps:
        yield "step missing", entry(lambda e: e.pop("step")), ValueError, STEP0
        for label, value, exc in [("-1", -1, ValueError), ("2.5", 2.5, (TypeError, ValueError)),
                                  ("nan", float("nan"), (TypeError, ValueError)),
                                  ("inf", float("inf"), (TypeError, ValueError)),
                                  ("2**63", 2**63, ValueError), ("'3'", "3", TypeError),
                                  ("None", None, TypeError),
                                  ("array of 2", np.array([1.0, 2.0]), (TypeError, ValueError)),
                                  ("list", [3], TypeError)]:
            yield f"step={label}", setitem("step", value), exc, STEP0
    yield f"{X} wrong shape", setitem(X, np.zeros(7)), ValueError, X0
    yield f"{X} int dtype", setitem(X, np.zeros(5, np.int64)), TypeError, X0
    yield f"{X} a string", setitem(X, "abc"), (TypeError, ValueError), X0
    if decl.counts_steps:       # (SGD's None momentum_buffer is torch's "start from the grad")
        yield f"{X} None", setitem(X, None), (TypeError, ValueError), X0
    for s in decl.scalars:
        Y0 = rf"state\[0\]\['{s.name}'\]"
        yield f"{s.name} a string", setitem(s.name, "x"), TypeError, Y0
        yield f"{s.name} array of 2", setitem(s.name, np.array([1.0, 2.0])), TypeError, Y0
    yield "unknown state entry", setitem("bogus", np.zeros(5)), ValueError, "bogus"
    yield "state for a param no group has", lambda sd: sd["state"].__setitem__(
        99, dict(sd["state"][0])), ValueError, r"\b99\b"
    yield "state entry a list", lambda sd: sd["state"].__setitem__(0, [1, 2]), TypeError, \
        r"state\[0\]"
    yield "state a list", lambda sd: sd.__setitem__("state", list(sd["state"].values())), \
        TypeError, r"\bstate\b"
    yield "param_groups not a list", lambda sd: sd.__setitem__("param_groups", 3), \
        (TypeError, ValueError), r"param_groups"
    yield "group without params", lambda sd: sd["param_groups"][1].pop("params"), \
        (TypeError, ValueError), r"params"
    yield "group without lr", lambda sd: sd["param_groups"][1].pop("lr"), \
        (TypeError, ValueError), r"\blr\b"
    yield "group lr '0.1'", lambda sd: sd["param_groups"][1].__setitem__("lr", "0.1"), \
        TypeError, r"\blr\b"
    yield "group lr 10**400", lambda sd: sd["param_groups"][1].__setitem__("lr", 10**400), \
        (TypeError, ValueError), r"\blr\b"


# Loading resets the plan, so the path matters only for what must survive a
# failed load: run with a cached plan (the more fragile case).
LOADS = [pytest.param(decl.name, "plan", mutate, exc, fragment, id=f"{decl.name}-{label}")
         for decl in FAMILY for label, mutate, exc, fragment in load_cases(decl)]


def test_sgd_momentum_buffer_none_loads_as_torch_does():
    """torch saves and accepts momentum_buffer=None: the next step starts the
    buffer from the grad, as on a first step."""
    p = np.linspace(-1.0, 1.0, 5)
    opt = gdcore.SGD([p], lr=0.1, momentum=0.9)
    opt.step([np.ones(5)])
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"] = None
    opt.load_state_dict(sd)
    fresh_p = p.copy()
    fresh = gdcore.SGD([fresh_p], lr=0.1, momentum=0.9)
    g = np.arange(5.0)
    opt.step([g])
    fresh.step([g])
    np.testing.assert_array_equal(p, fresh_p)
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], g)


@pytest.mark.parametrize("name,path,mutate,exc,fragment", LOADS)
def test_load_state_dict_rejects_at_load_time(name, path, mutate, exc, fragment):
    opt, params = setup(name, path)
    sd = copy.deepcopy(opt.state_dict())
    mutate(sd)
    before = snapshot(opt, params)
    expect_error(lambda: opt.load_state_dict(sd), exc, fragment)
    assert_unchanged(before, opt)
    twin, twin_params = setup(name, path)          # the failed load left it working
    for t in (2, 3):
        opt.step(make_grads(params, path, t))
        twin.step(make_grads(twin_params, path, t))
    assert same(values(opt, params), values(twin, twin_params))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", [d.name for d in FAMILY if d.counts_steps])
def test_load_state_dict_accepts_torch_like_step_values(name, path):
    """torch saves step as a float tensor: a whole-number step of any numeric
    type loads as that step."""
    outcomes = []
    for step in (3, np.int64(3), 3.0, np.float64(3), np.array(3.0, f32), np.array(3)):
        opt, params = setup(name, path)
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][0]["step"] = step
        opt.load_state_dict(sd)
        opt.step(make_grads(params, path, 2))
        outcomes.append(values(opt, params))
        assert opt.state[params[0]]["step"] == 4, f"step {step!r} loaded as something else"
    for k, outcome in enumerate(outcomes[1:], 1):
        assert same(outcome, outcomes[0]), f"step value #{k} loads differently from 3"


# ---------------------------------------------------- set_num_threads, env
@pytest.mark.parametrize("value,exc", [(1.5, TypeError), (0, ValueError), (-1, ValueError),
                                       ("2", TypeError), (None, TypeError),
                                       (np.float64(2), TypeError)],
                         ids=["1.5", "0", "-1", "'2'", "None", "np.float64(2)"])
def test_set_num_threads_rejects_naming_it(value, exc, threads):
    before = gdcore.get_num_threads()
    expect_error(lambda: gdcore.set_num_threads(value), exc, r"num_threads|number of threads")
    assert gdcore.get_num_threads() == before


def run_python(code, env=None, timeout=120):
    """Run code in a fresh interpreter (a crash fails the test, not pytest).
    A fixed mmap threshold makes glibc return every freed large array to
    the system at once, so that a use after free faults instead of reading
    stale memory; passive OpenMP waiting keeps two Python threads' kernel
    teams from spinning against each other on few cores."""
    full_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_WAIT_POLICY="PASSIVE")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-X", "faulthandler", "-W", "always", "-c",
                           textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=os.path.dirname(__file__))


def assert_passed(result):
    tail = (result.stdout[-1500:] + "\n" + result.stderr[-3000:]).strip()
    assert result.returncode == 0, f"exit status {result.returncode} " \
        f"({'crashed: signal ' + str(-result.returncode) if result.returncode < 0 else 'failed'}" \
        f"):\n{tail}"
    assert "PASS" in result.stdout, tail


@pytest.mark.parametrize("value", ["0", "abc", "-2", "1.5", "2x"])
def test_bad_GDCORE_NUM_THREADS_warns_or_fails_naming_it(value):
    r = run_python("import gdcore; print('threads', gdcore.get_num_threads())",
                   env={"GDCORE_NUM_THREADS": value}, timeout=60)
    assert r.returncode >= 0, f"import crashed (signal {-r.returncode}):\n{r.stderr[-2000:]}"
    if r.returncode == 0:
        assert "GDCORE_NUM_THREADS" in r.stderr, \
            f"GDCORE_NUM_THREADS={value!r} was ignored without a warning naming it"
    else:
        last = r.stderr.strip().splitlines()[-1]
        assert re.match(r"(TypeError|ValueError|RuntimeError|ImportError)\b", last) and \
            "GDCORE_NUM_THREADS" in last, \
            f"import failed without naming GDCORE_NUM_THREADS: {last}"


def test_good_GDCORE_NUM_THREADS_is_used():
    r = run_python("import gdcore; print('threads', gdcore.get_num_threads())",
                   env={"GDCORE_NUM_THREADS": "2"}, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = 2 if gdcore.build_info()["threads"] else 1
    assert f"threads {expected}" in r.stdout
    assert "GDCORE_NUM_THREADS" not in r.stderr


# ===================================================== section 6: functional
def functional_setup(decl, multi):
    config = hungry(decl)
    n = 2 if multi else 1
    params = [np.linspace(-1, 1, 5) + k for k in range(n)]
    grads = [np.full(5, 0.25) + k for k in range(n)]
    slots, scalars, kwargs = functional_args(decl.name, config, params)
    return params, grads, slots, scalars, kwargs


def functional_cases(decl):
    """(id, multi, change(step, kwargs, buffers) -> step, exception, fragment)."""
    if decl.step != "unused":
        for multi in (False, True):
            word = "steps" if multi else "step"
            for label, value, exc in [("2**63", 2**63, ValueError), ("2**64", 2**64, ValueError),
                                      ("-1", -1, ValueError), ("0", 0, ValueError),
                                      ("1.5", 1.5, TypeError), ("'1'", "1", TypeError),
                                      ("np.float64(2)", np.float64(2), TypeError)]:
                yield f"{word}={label}", multi, (lambda v: lambda s, kw, b: v)(value), exc, \
                    rf"\b{word}\b"
        for label, value, exc in [("[1, 2**63]", [1, 2**63], ValueError),
                                  ("[1, -1]", [1, -1], ValueError),
                                  ("[1, 1.5]", [1, 1.5], TypeError),
                                  ("(1, None)", (1, None), TypeError)]:
            yield f"steps={label}", True, (lambda v: lambda s, kw, b: v)(value), exc, r"steps\[1\]"
        yield "steps=[1] for 2 params", True, lambda s, kw, b: [1], ValueError, r"\bsteps\b"
    for h in decl.hyper:
        if h.init_only or h.fixed or h.kind == "bool":
            continue
        names = h.c if h.split else (h.name,)
        table = BAD_REAL if (h.kind == "real" or h.split) else BAD_PAIR
        for name in names:
            for label, value, exc in table:
                def change(s, kw, b, name=name, value=value):
                    kw[name] = value
                    return s
                yield f"{name}={label}", False, change, exc, rf"\b{name}\b"
    # buffers of the _multi form

    def multi_buffer(what, value):
        def change(s, kw, b):
            b[what] = value(b[what])
            return s
        return change
    yield "params None", True, multi_buffer("params", lambda x: None), TypeError, r"\bparams\b"
    yield "grads None", True, multi_buffer("grads", lambda x: None), TypeError, r"\bgrads\b"
    yield "grads one short", True, multi_buffer("grads", lambda x: x[:1]), ValueError, r"\bgrads\b"
    for k, s in enumerate(decl.state):
        if s.when is None:
            def slot(value, k=k):
                def change(st, kw, b):
                    b["slots"][k] = value(b["slots"][k])
                    return st
                return change
            yield f"{s.plural} None", True, slot(lambda x: None), (TypeError, ValueError), \
                rf"\b{s.plural}\b"
            yield f"{s.plural} one short", True, slot(lambda x: x[:1]), ValueError, \
                rf"\b{s.plural}\b"
    for k, s in enumerate(decl.scalars):
        def scalar(value, k=k):
            def change(st, kw, b):
                b["scalars"][k] = value(b["scalars"][k])
                return st
            return change
        yield f"{s.plural} None", True, scalar(lambda x: None), TypeError, rf"\b{s.plural}\b"
        yield f"{s.plural} one short", True, scalar(lambda x: x[:1]), ValueError, \
            rf"\b{s.plural}\b"


FUNCTIONAL = [pytest.param(decl.name, multi, change, exc, fragment, id=f"{decl.name}-{label}")
              for decl in FAMILY for label, multi, change, exc, fragment in functional_cases(decl)]


@pytest.mark.parametrize("name,multi,change,exc,fragment", FUNCTIONAL)
def test_functional_rejects_naming_the_argument_and_changes_nothing(name, multi, change, exc,
                                                                   fragment):
    decl = BY_NAME[name]
    params, grads, slots, scalars, kwargs = functional_setup(decl, multi)
    arrays = [a for lst in [params, grads] + slots + scalars if lst is not None for a in lst]
    saved = [a.copy() for a in arrays]
    buffers = {"params": params, "grads": grads, "slots": slots, "scalars": scalars}
    step = change(1, kwargs, buffers)
    expect_error(lambda: call_functional(name, buffers["params"], buffers["grads"],
                                         buffers["slots"], buffers["scalars"], step, kwargs,
                                         multi), exc, fragment)
    for k, (a, b) in enumerate(zip(saved, arrays)):
        assert same(a, b), f"buffer {k} was modified by a call that raised"


# =============================================== section 2: one semantics
def agree_cases(decl):
    """(id, edit, reference edit or None): valid (or at least not obviously
    invalid) edits; both paths must do the same thing (step alike, or raise
    the same exception type), and where a reference edit is given, exactly
    what it does."""
    yield "no edit (control)", None, None
    if decl.counts_steps:
        def step(value):
            def edit(opt, ps, grads):
                opt.state[ps[0]]["step"] = value
            return edit
        for label, value in [("np.int64(3)", np.int64(3)), ("np.int32(3)", np.int32(3))]:
            yield f"state step={label}", step(value), step(3)
        for label, value in [("np.float64(3)", np.float64(3)), ("3.0", 3.0), ("True", True),
                             ("0-d array", np.array(3))]:
            yield f"state step={label}", step(value), None
    lr = 2.0**-6

    def group1(key, value):
        def edit(opt, ps, grads):
            opt.param_groups[1][key] = value() if callable(value) else value
        return edit
    for label, value in [("np.float32", lambda: np.float32(lr)), ("np.float64", lambda: f64(lr)),
                         ("0-d array", lambda: np.array(lr)), ("Fraction", Fraction(1, 64)),
                         ("Decimal", Decimal("0.015625")), ("int 0", 0)]:
        yield f"group lr {label}", group1("lr", value), group1("lr", lr if label != "int 0" else 0.0)

    def replace_group(opt, ps, grads):
        opt.param_groups[1] = dict(opt.param_groups[1], lr=lr)
    yield "group 1 dict replaced (new lr)", replace_group, group1("lr", lr)

    def reverse(opt, ps, grads):
        opt.param_groups.reverse()
        grads[:] = grads[2:] + grads[:2]
    yield "param_groups reversed", reverse, None

    def new_state(opt, ps, grads):
        opt.state = type(opt.state)()
    yield "opt.state replaced by a new ParamState", new_state, None

    def plain_dict(opt, ps, grads):
        opt.state = {}
    yield "opt.state replaced by a dict", plain_dict, None

    def clear(opt, ps, grads):
        opt.state.clear()
    yield "opt.state cleared", clear, new_state

    def drop(opt, ps, grads):
        del opt.state[ps[0]]
    yield "state of a deleted", drop, None

    def empty(opt, ps, grads):
        opt.state[ps[0]] = {}
    yield "state of a set to {}", empty, None

    def param_copy(opt, ps, grads):
        opt.param_groups[0]["params"][0] = ps[0].copy()
    yield "a replaced by a copy in its group", param_copy, None

    def tuples(opt, ps, grads):
        for g in opt.param_groups:
            g["params"] = tuple(g["params"])
    yield "group params tuples", tuples, None

    def grad_none(opt, ps, grads):
        grads[0] = None
    yield "grad of a None", grad_none, None

    def grad_list(opt, ps, grads):
        grads[0] = grads[0].tolist()
    yield "grad of a a Python list", grad_list, None

    def grad_strided(opt, ps, grads):
        grads[0] = np.repeat(grads[0], 2)[::2]
    yield "grad of a not contiguous", grad_strided, None

    def grad_readonly(opt, ps, grads):
        grads[0] = readonly(grads[0])
    yield "grad of a read-only", grad_readonly, None

    least = CONFIGS[decl.name][0]
    if decl.state_in_use({**decl.defaults(), **least}) != \
            decl.state_in_use({**decl.defaults(), **hungry(decl)}):
        def fewer_slots(opt, ps, grads):
            opt.param_groups[1].update({h.name: least.get(h.name, h.default)
                                        for h in decl.hyper if not h.fixed})
        yield "group 1 options that use less state", fewer_slots, None


def run_edit(name, path, edit, grads_as=None):
    """Step once after `edit`; the outcome by value (or the exception type)."""
    opt, params = setup(name, path)
    grads = make_grads(params, path, 2)
    if edit is not None:
        edit(opt, params, grads)
    try:
        opt.step(tuple(grads) if grads_as == "tuple" else grads)
        error = None
    except Exception as e:                          # noqa: BLE001
        error = f"{type(e).__name__}"
    groups = opt.param_groups if isinstance(opt.param_groups, list) else []
    held = [p for g in groups if isinstance(g.get("params"), (list, tuple))
            for p in g["params"] if isinstance(p, np.ndarray)]
    compare = [p for p in held if p is not params[3]]
    compare += [p for p in params[:3] if not any(p is q for q in compare)]
    return error, values(opt, compare)[0]


AGREE = [pytest.param(decl.name, edit, reference, id=f"{decl.name}-{label}")
         for decl in FAMILY for label, edit, reference in agree_cases(decl)]


@pytest.mark.parametrize("name,edit,reference", AGREE)
def test_plan_and_general_path_agree(name, edit, reference):
    plan = run_edit(name, "plan", edit)
    general = run_edit(name, "general", edit)
    assert plan[0] == general[0], f"plan path: {plan[0] or 'stepped'}; " \
                                  f"general path: {general[0] or 'stepped'}"
    for k, (x, y) in enumerate(zip(plan[1], general[1])):
        assert same(x[0], y[0]), f"param {k} differs between the plan and the general path"
        assert same(x[1], y[1]), f"state of param {k} differs between the paths:\n" \
                                 f"plan    {x[1]}\ngeneral {y[1]}"
    if reference is not None:
        want = run_edit(name, "general", reference)
        assert want[0] is None and plan[0] is None, (plan[0], want[0])
        assert same(plan[1], want[1]), "the edit does not step as its plain equivalent"


ALIASES = {
    "later group's grad is an earlier group's param": lambda opt, ps, g: g.__setitem__(2, ps[0]),
    "earlier group's grad is a later group's param": lambda opt, ps, g: g.__setitem__(0, ps[2]),
    "grad is another group's state": lambda opt, ps, g: g.__setitem__(
        2, opt.state[ps[0]][first_slot(BY_NAME[type(opt).__name__])[0]]),
    "grad is its own param": lambda opt, ps, g: g.__setitem__(0, ps[0]),
    "grad is its own state": lambda opt, ps, g: g.__setitem__(
        0, opt.state[ps[0]][first_slot(BY_NAME[type(opt).__name__])[0]]),
}


@pytest.mark.parametrize("alias", list(ALIASES))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_grad_aliasing_a_written_buffer_is_read_before_the_step(name, path, alias):
    """README: such a grad is read from a copy; so the result equals stepping
    with an explicit copy, on every path, with one group or several."""
    def run(copy_grad):
        opt, params = setup(name, path)
        grads = make_grads(params, path, 2)
        ALIASES[alias](opt, params, grads)
        if copy_grad:
            grads = [None if g is None else g.copy() for g in grads]
        opt.step(grads)
        return values(opt, params)
    assert same(run(False), run(True)), "the aliasing grad was read after part of the step"


# ------------------------------------- all or nothing under KeyboardInterrupt
class Interrupt:
    """A trace function raising KeyboardInterrupt at the n-th line gdcore's
    Python code executes (a signal arriving there, deterministically)."""

    def __init__(self, n):
        self.n, self.count, self.where = n, 0, None

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename.startswith(GDCORE_DIR):
            return self.local
        return None

    def local(self, frame, event, arg):
        if event == "line":
            self.count += 1
            if self.count == self.n:
                self.where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} " \
                             f"in {frame.f_code.co_name}"
                signal.raise_signal(signal.SIGINT)      # as Ctrl-C: Python's handler runs next
        return self.local


class Flaky:
    """A hyperparameter whose n-th conversion raises KeyboardInterrupt."""

    def __init__(self, value, n):
        self.value, self.n, self.calls = value, n, 0

    def __float__(self):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt(f"__float__ call {self.n}")
        return float(self.value)

    def __eq__(self, other):
        return isinstance(other, Flaky) and other.value == self.value

    __hash__ = object.__hash__


class InterruptingGrad:
    def __init__(self, grad):
        self.grad = grad

    def __array__(self, dtype=None, copy=None):
        raise KeyboardInterrupt("grad __array__")


def traced_step(opt, grads, tracer):
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        opt.step(grads)
    finally:
        sys.settrace(old)


# Tracing every line is slow (one step per line a step executes), and the
# step code is the same for every optimizer: trace the case (a
# multi-group first step on the general path) for all, the rest for
# optimizers that differ in what a step creates (no counter; three buffers;
# scalar state; a buffer initialised from a hyperparameter).
TRACED = ["SGD", "Adam", "ASGD", "Rprop"]
INTERRUPTS = [pytest.param(name, path, history, mode,
                           id=f"{name}-{path}-{'first' if history == 0 else 'later'} step-{mode}")
              for name in NAMES for path in PATHS for history in (0, 2)
              for mode in ("trace", "hyperparameter", "grad")
              if mode != "trace" or name in TRACED or (path, history) == ("general", 0)]


@pytest.mark.parametrize("name,path,history,mode", INTERRUPTS)
def test_interrupted_step_is_all_or_nothing(name, path, history, mode):
    """KeyboardInterrupt anywhere in a multi-group step: either every group
    stepped (params, state, counters) or nothing changed; and the optimizer
    keeps working (the next step is right)."""
    ref, rps = setup(name, path, steps=history)
    before = values(ref, rps)
    ref.step(make_grads(rps, path, history))
    after = values(ref, rps)
    ref.step(make_grads(rps, path, history + 1))
    after_next = values(ref, rps)
    lr = ref.param_groups[1]["lr"]
    failures = []
    for n in range(1, 100_000):
        opt, params = setup(name, path, steps=history)
        grads = make_grads(params, path, history)
        where = f"n={n}"
        try:
            if mode == "trace":
                tracer = Interrupt(n)
                traced_step(opt, grads, tracer)
            elif mode == "hyperparameter":
                opt.param_groups[1]["lr"] = Flaky(lr, n)
                opt.step(grads)
            else:
                grads[2] = InterruptingGrad(grads[2])
                opt.step(grads)
            completed = True
        except KeyboardInterrupt as e:
            completed = False
            where = f"interrupt at {e}"
        now = values(opt, params)
        if mode == "hyperparameter":
            opt.param_groups[1]["lr"] = lr
        if completed:
            assert same(now, after), "the uninterrupted step computed something else"
            break
        if same(now, before):
            retry, want = make_grads(params, path, history), after
        elif same(now, after):
            retry, want = make_grads(params, path, history + 1), after_next
        else:
            failures.append(f"{where}: half a step committed")
            continue
        try:
            opt.step(retry)
        except Exception as e:                      # noqa: BLE001
            failures.append(f"{where}: the next step raised {type(e).__name__}: {e}")
            continue
        if not same(values(opt, params), want):
            failures.append(f"{where}: the next step computed something else")
        if mode == "grad":
            break
    assert not failures, f"{len(failures)} interrupt points break all-or-nothing, e.g.\n" + \
        "\n".join(failures[:6])


# ====================================================== section 4: copies
def check_copy(opt, params, dup, dup_params, path):
    """dup (a deep copy or an unpickled opt) is a working optimizer over
    dup_params, independent of opt, whose steps equal opt's."""
    held = [p for g in dup.param_groups for p in g["params"]]
    assert len(held) == len(params)
    assert all(p is q for p, q in zip(held, dup_params)), \
        "the copy's groups do not hold the copied params"
    for k, (p, q) in enumerate(zip(params, dup_params)):
        assert q is not p and not np.shares_memory(p, q), f"params[{k}] is shared with the copy"
        assert same(p, q)
        assert (p in opt.state) == (q in dup.state), \
            f"state of params[{k}] lost by the copy (still keyed by the original param?)"
        if p in opt.state:
            assert same(opt.state[p], dup.state[q]), f"state of params[{k}] differs in the copy"
            for key, v in dup.state[q].items():
                if isinstance(v, np.ndarray):
                    assert not np.shares_memory(v, opt.state[p][key]), \
                        f"state[{k}][{key!r}] is shared with the copy"
    assert len(dup.state) == len(opt.state)
    assert same([{k: v for k, v in g.items() if k != "params"} for g in dup.param_groups],
                [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    original = values(opt, params)
    for t in (2, 3):
        dup.step(make_grads(dup_params, path, t))
        assert same(values(opt, params), original), "stepping the copy changed the original"
        opt.step(make_grads(params, path, t))
        assert same(values(opt, params), values(dup, dup_params)), \
            f"step {t}: the copy steps differently from the original"
        original = values(opt, params)


@pytest.mark.parametrize("what", ["opt", "(params, opt)"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_is_an_independent_working_optimizer(name, path, what):
    opt, params = setup(name, path)
    try:
        if what == "opt":
            dup = copy.deepcopy(opt)
            dup_params = [p for g in dup.param_groups for p in g["params"]]
        else:
            dup_params, dup = copy.deepcopy((params, opt))
    except Exception as e:                          # noqa: BLE001
        pytest.fail(f"copy.deepcopy raised {type(e).__name__}: {e}")
    check_copy(opt, params, dup, dup_params, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_pickle_round_trips_or_says_use_state_dict(name, path):
    opt, params = setup(name, path)
    try:
        blob = pickle.dumps((params, opt))
    except Exception as e:                          # noqa: BLE001
        assert isinstance(e, TypeError) and "state_dict" in str(e), \
            f"pickling failed without pointing to state_dict(): {type(e).__name__}: {e}"
        return
    dup_params, dup = pickle.loads(blob)
    check_copy(opt, params, dup, dup_params, path)


# ============================================ section 1: memory safety
@pytest.mark.parametrize("name", NAMES)
def test_functional_multi_user_code_replacing_callers_buffers(name):
    """A grad's __array__ replaces params[1] and every state/scalar list's
    [1] in the caller's lists: the call steps the arrays it was given (or
    raises, changing nothing), never the replacements."""
    decl = BY_NAME[name]
    params, grads, slots, scalars, kwargs = functional_setup(decl, True)
    originals = [params[1]] + [lst[1] for lst in slots + scalars if lst is not None]
    ref_params, ref_grads, ref_slots, ref_scalars, _ = functional_setup(decl, True)
    call_functional(name, ref_params, ref_grads, ref_slots, ref_scalars, 1, kwargs, True)
    reference = [ref_params[1]] + [lst[1] for lst in ref_slots + ref_scalars if lst is not None]
    untouched = [a.copy() for a in originals]
    replacements = []

    class Swap:
        def __array__(self, dtype=None, copy=None):
            params[1] = np.zeros(5)
            replacements.append((params[1], params[1].copy()))
            for lst in slots + scalars:
                if lst is not None:
                    lst[1] = lst[1].copy()
                    replacements.append((lst[1], lst[1].copy()))
            return grads[0].copy()
    try:
        call_functional(name, params, [Swap(), grads[1]], slots, scalars, 1, kwargs, True)
    except Exception as e:                          # noqa: BLE001
        assert isinstance(e, (TypeError, ValueError, RuntimeError)), f"{type(e).__name__}: {e}"
        for k, (a, b) in enumerate(zip(originals, untouched)):
            assert same(a, b), f"buffer {k} modified by a call that raised"
        return
    for k, (a, b) in enumerate(zip(originals, reference)):
        assert same(a, b), f"original buffer {k} was not stepped as given"
    for k, (now, then) in enumerate(replacements):
        assert same(now, then), f"replacement buffer {k} (not the one given) was written"


COMMON = r'''
import re, sys, threading
import numpy as np
import gdcore
import gdcore.functional as F

PATH = {path!r}
N = {n}

class Sub(np.ndarray):
    """A grad whose copy (non-contiguous grads are copied during the checks)
    runs user code: __array_finalize__."""
    hook = None
    def __array_finalize__(self, obj):
        hook, Sub.hook = Sub.hook, None
        if hook is not None:
            hook()

class ArrayLike:
    def __init__(self, array, hook):
        self.array, self.hook = array, hook
    def __array__(self, dtype=None, copy=None):
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.array

def wrap(kind, grad, hook):
    if kind == "array":
        return ArrayLike(grad, hook)
    g = np.repeat(grad, 2)[::2].view(Sub)       # not contiguous: copied when checked
    Sub.hook = hook
    return g

def setup(path=PATH, n=N, steps=1, skip=(), **config):
    """Adam over a, b | c, d (n, n | n, 3 elements), stepped `steps` times
    with the grads of `skip` None (so those params have no state yet)."""
    ps = [np.linspace(-1, 1, n).copy(), np.linspace(1, 2, n).copy(),   # own their data
          np.linspace(-2, 0, n).copy(), np.ones(3, np.float32)]
    opt = gdcore.Adam([{{"params": ps[:2]}}, {{"params": ps[2:]}}], lr=1e-3, **config)
    for _ in range(steps):
        g = grads(path, 0.5)
        for k in skip:
            g[k] = None
        opt.step(g)
    assert (opt._plan is not None) == (path == "plan" and not skip), "setup: wrong path"
    return opt, ps

def grads(path, value, n=N):
    g = [np.full(n, value), np.full(n, value / 2), np.full(n, -value), np.ones(3, np.float32)]
    if path == "general":
        g[3] = None
    return g

def values(opt, ps):
    return [(p.copy(), {{k: (v.copy() if isinstance(v, np.ndarray) else v)
                        for k, v in opt.state[p].items()}} if p in opt.state else None)
            for p in ps]

def same(x, y):
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape
                and x.dtype == y.dtype and x.tobytes() == y.tobytes())
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(map(same, x, y))
    return x == y

def reference(values_seq, path=PATH, n=N, skip=()):
    opt, ps = setup(path, n, skip=skip)
    for v in values_seq:
        opt.step(grads(path, v, n))
    return values(opt, ps)
'''


def script(body, path="plan", n=100_000):
    return COMMON.format(path=path, n=n) + textwrap.dedent(body)


def test_sgd_multi_grad_replacing_callers_param_does_not_crash():
    """Issue 9's reproducer, as given (a release build segfaulted)."""
    assert_passed(run_python(r'''
        import numpy as np, gdcore
        params = [np.ones(4), np.ones(4_000_000)]
        class G:
            def __array__(self, dtype=None, copy=None):
                params[1] = np.ones(4_000_000)
                return np.ones(4)
        try:
            gdcore.functional.sgd_multi(params, [G(), np.ones(4_000_000)], lr=0.1)
        except (TypeError, ValueError, RuntimeError) as e:
            assert (params[0] == 1).all(), "raised, but params[0] was stepped"
        else:
            assert (params[0] == 0.9).all(), "params[0] was not stepped"
            assert (params[1] == 1).all(), "the replacement array was stepped"
        print("PASS")
    '''))


@pytest.mark.parametrize("kind", ["array", "finalize"],
                         ids=["__array__", "__array_finalize__ during checks"])
@pytest.mark.parametrize("path", PATHS)
def test_grad_user_code_replacing_another_groups_state(path, kind):
    """A grad's user code replaces (and drops) another group's state array,
    in both directions, and during the first step of the hook's own param
    (its state is being created): no crash; the step either raises,
    changing nothing, or steps as if the replacement came before or after
    it."""
    assert_passed(run_python(script(f'''
        KIND = {kind!r}
        for victim, hook_at, skip in ((0, 2, ()), (2, 0, ()), (0, 2, (2,))):
            opt, ps = setup(skip=skip)
            fresh = values(opt, ps)
            pre = opt.state[ps[victim]]["exp_avg"].copy()
            def hook():
                st = opt.state[ps[victim]]
                st["exp_avg"] = st["exp_avg"].copy()        # the old array is freed
            g = grads(PATH, 0.25)
            g[hook_at] = wrap(KIND, g[hook_at], hook)
            want = reference([0.25], skip=skip)
            try:
                opt.step(g)
            except (TypeError, ValueError, RuntimeError) as e:
                assert same(values(opt, ps), fresh), f"raised {{e!r}} after changing something"
                continue
            now = values(opt, ps)
            for k, ((p, s), (wp, ws)) in enumerate(zip(now, want)):
                assert same(p, wp), f"victim {{victim}}: params[{{k}}] stepped wrongly"
                if k == victim and same(s["exp_avg"], pre):     # replaced after the step
                    s = dict(s, exp_avg=ws["exp_avg"])
                assert same(s, ws), f"victim {{victim}}: state of params[{{k}}] is wrong"
            opt.step(grads(PATH, 0.125))                    # still works
        print("PASS")
    ''', path)))


@pytest.mark.parametrize("kind", ["array", "finalize"],
                         ids=["__array__", "__array_finalize__ during checks"])
@pytest.mark.parametrize("path", PATHS)
def test_reentrant_step_raises_or_is_safe(path, kind):
    """A step started from a grad's user code while a step of the same
    optimizer runs: a clear RuntimeError (re-entrant/concurrent use), or a
    result equal to the two steps one after the other."""
    assert_passed(run_python(script(f'''
        KIND = {kind!r}
        opt, ps = setup()
        inner = []
        def hook():
            try:
                opt.step(grads(PATH, 0.25))
                inner.append(None)
            except Exception as e:
                inner.append(e)
        g = grads(PATH, 0.5)
        g[1] = wrap(KIND, g[1], hook)
        try:
            opt.step(g)
            outer = None
        except Exception as e:
            outer = e
        assert outer is None or isinstance(outer, (TypeError, ValueError, RuntimeError)), repr(outer)
        if inner and inner[0] is not None:
            e = inner[0]
            assert isinstance(e, RuntimeError) and re.search(r"{REENTRANT}", str(e)), \\
                f"re-entrant step raised {{e!r}}"
            done = [] if outer else [0.5]
        elif inner:
            done = [0.25] if outer else [0.25, 0.5]
        else:                                   # the hook never ran
            done = [] if outer else [0.5]
        assert same(values(opt, ps), reference(done)), \\
            f"re-entrant use: result is not {{done}} applied in order (inner={{inner}}, outer={{outer!r}})"
        opt.step(grads(PATH, 0.125))
        assert same(values(opt, ps), reference(done + [0.125])), "the optimizer is broken afterwards"
        print("PASS", done)
    ''', path)))


@pytest.mark.parametrize("path", PATHS)
def test_two_threads_one_optimizer_are_serialised_or_refused(path):
    """Two threads, 200 steps each, 100k-element params: no crash; every
    step either ran (as if one after the other) or raised a clear
    RuntimeError having changed nothing."""
    assert_passed(run_python(script(r'''
        sys.setswitchinterval(1e-4)
        opt, ps = setup()
        ok, errors = [0, 0], []
        barrier = threading.Barrier(2)
        def work(i):
            barrier.wait()
            for _ in range(200):
                try:
                    opt.step(grads(PATH, 0.5))
                    ok[i] += 1
                except BaseException as e:
                    errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        bad = [e for e in errors if not (isinstance(e, RuntimeError) and re.search(REENTRANT, str(e)))]
        assert not bad, f"unexpected errors: {bad[:3]}"
        assert same(values(opt, ps), reference([0.5] * sum(ok))), \
            f"{sum(ok)} steps ran but the result is not {sum(ok)} sequential steps"
        print("PASS", ok, len(errors))
    '''.replace("REENTRANT", repr(REENTRANT)), path, n=100_000)))


@pytest.mark.parametrize("path", PATHS)
def test_two_threads_two_optimizers_equal_sequential(path):
    assert_passed(run_python(script(r'''
        sys.setswitchinterval(1e-4)
        runs = [setup(), setup()]
        barrier = threading.Barrier(2)
        errors = []
        def work(i):
            opt, ps = runs[i]
            barrier.wait()
            try:
                for _ in range(200):
                    opt.step(grads(PATH, 0.5 + i))
            except BaseException as e:
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not errors, errors[:3]
        for i, (opt, ps) in enumerate(runs):
            assert same(values(opt, ps), reference([0.5 + i] * 200)), f"optimizer {i} differs"
        print("PASS")
    ''', path, n=100_000)))


@pytest.mark.parametrize("target", ["param", "state"])
@pytest.mark.parametrize("path", PATHS)
def test_resize_in_place_after_plan_is_rejected(path, target):
    """ndarray.resize(..., refcheck=False) shrinks a param, or a state array
    the optimizer holds, after the plan was cached: the next step raises
    ValueError (naming what no longer fits), never crashes."""
    assert_passed(run_python(script(f'''
        TARGET = {target!r}
        opt, ps = setup()
        if TARGET == "state":
            own = opt.state[ps[0]]["exp_avg"].copy()          # owns its data: resizable
            opt.state[ps[0]]["exp_avg"] = own
            opt.step(grads(PATH, 0.5))                       # a plan now holds `own`
            assert (opt._plan is not None) == (PATH == "plan")
            victim = own
        else:
            victim = ps[0]
        before = values(opt, ps)
        victim.resize(4, refcheck=False)
        g = grads(PATH, 0.25)
        if TARGET == "param":
            g[0] = np.full(4, 0.25)                          # the grad fits the new param
        try:
            opt.step(g)
        except ValueError as e:
            assert re.search(r"exp_avg|params\\[0\\]", str(e)), f"message names nothing: {{e}}"
        else:
            raise AssertionError("stepped a param whose state no longer fits it")
        now = values(opt, ps)
        assert same(now[1:], before[1:]), "other params or state changed"
        print("PASS")
    ''', path)))


@pytest.mark.parametrize("api", ["class-plan", "class-general", "functional"])
def test_resize_from_user_code_during_the_checks_does_not_crash(api):
    """A grad's copy (__array_finalize__) shrinks an already checked param:
    the call must not write through the stale pointer."""
    path = "general" if api == "class-general" else "plan"
    assert_passed(run_python(script(f'''
        API = {api!r}
        opt, ps = setup()
        g = grads(PATH, 0.25)
        g[1] = wrap("finalize", g[1], lambda: ps[0].resize(4, refcheck=False))
        try:
            if API == "functional":
                m = [np.zeros(N), np.zeros(N)]
                v = [np.zeros(N), np.zeros(N)]
                F.adam_multi(ps[:2], g[:2], m, v, steps=1)
            else:
                opt.step(g)
        except (TypeError, ValueError, RuntimeError) as e:
            print("raised", type(e).__name__, e)
        print("PASS")
    ''', path)))
