"""Bad input: a table of cases, each with the exception type, a fragment of
its message, and a check that nothing (params, state, step counters) changed."""
import copy
import re

import numpy as np
import pytest

import gdcore
import gdcore.functional as F
from conftest import CONFIGS
from gdcore.family import FAMILY
from test_consistency import call_functional, functional_args

f32, f64 = np.float32, np.float64


def readonly(a):
    a.flags.writeable = False
    return a


# ------------------------------------------------------------ construction
CONSTRUCTION = [
    ("int param", lambda: gdcore.SGD([np.ones(3, int)]), TypeError, "dtype int64"),
    ("int32 param", lambda: gdcore.Adam([np.ones(3, np.int32)]), TypeError, "int32"),
    ("big-endian param", lambda: gdcore.Adam([np.ones(3, ">f8")]), TypeError, "byte order"),
    ("list param", lambda: gdcore.SGD([[1.0, 2.0]]), TypeError, "must be a numpy.ndarray"),
    ("single array", lambda: gdcore.SGD(np.ones(3)), TypeError, "iterable"),
    ("not iterable", lambda: gdcore.SGD(3), TypeError, "iterable"),
    ("non-contiguous", lambda: gdcore.SGD([np.ones(8)[::2]]), ValueError, "not C-contiguous"),
    ("read-only", lambda: gdcore.SGD([readonly(np.ones(3))]), ValueError, "read-only"),
    ("empty list", lambda: gdcore.Adam([]), ValueError, "empty parameter list"),
    ("empty group", lambda: gdcore.Adam([{"params": []}]), ValueError, "empty parameter list"),
    ("same array twice", lambda: (lambda a: gdcore.SGD([a, a]))(np.ones(3)), ValueError,
     "params[1] is the same array as params[0]"),
    ("overlapping views", lambda: (lambda a: gdcore.SGD([a[:6], a[4:]]))(np.ones(10)),
     ValueError, "overlaps in memory"),
    ("overlap across groups", lambda: (lambda a: gdcore.SGD(
        [{"params": [a[:6]]}, {"params": [a[5:]]}]))(np.ones(10)), ValueError, "overlaps"),
    ("unknown group key", lambda: gdcore.SGD([{"params": [np.ones(2)], "lrr": 1}]), TypeError,
     "unknown hyperparameters"),
    ("SGD lr", lambda: gdcore.SGD([np.ones(2)], lr=-0.1), ValueError, "Invalid learning rate"),
    ("SGD lr nan", lambda: gdcore.SGD([np.ones(2)], lr=float("nan")), ValueError,
     "Invalid learning rate"),
    ("SGD momentum", lambda: gdcore.SGD([np.ones(2)], momentum=-1), ValueError,
     "Invalid momentum value"),
    ("SGD weight_decay", lambda: gdcore.SGD([np.ones(2)], weight_decay=-1), ValueError,
     "Invalid weight_decay value"),
    ("SGD nesterov no momentum", lambda: gdcore.SGD([np.ones(2)], nesterov=True), ValueError,
     "Nesterov momentum requires a momentum and zero dampening"),
    ("SGD nesterov dampening", lambda: gdcore.SGD([np.ones(2)], momentum=0.9, dampening=0.1,
                                                  nesterov=True), ValueError, "Nesterov"),
    ("SGD lr string", lambda: gdcore.SGD([np.ones(2)], lr="0.1"), TypeError, "real number"),
    ("Adagrad lr_decay", lambda: gdcore.Adagrad([np.ones(2)], lr_decay=-1), ValueError,
     "Invalid lr_decay value"),
    ("Adagrad initial_accumulator_value",
     lambda: gdcore.Adagrad([np.ones(2)], initial_accumulator_value=-1), ValueError,
     "Invalid initial_accumulator_value value"),
    ("Adagrad eps", lambda: gdcore.Adagrad([np.ones(2)], eps=-1), ValueError,
     "Invalid epsilon value"),
    ("RMSprop alpha", lambda: gdcore.RMSprop([np.ones(2)], alpha=-0.5), ValueError,
     "Invalid alpha value"),
    ("RMSprop momentum", lambda: gdcore.RMSprop([np.ones(2)], momentum=-0.5), ValueError,
     "Invalid momentum value"),
    ("RMSprop eps", lambda: gdcore.RMSprop([np.ones(2)], eps=-1e-8), ValueError,
     "Invalid epsilon value"),
    ("Adam beta1", lambda: gdcore.Adam([np.ones(2)], betas=(1.0, 0.9)), ValueError,
     "Invalid beta parameter at index 0"),
    ("Adam beta2", lambda: gdcore.Adam([np.ones(2)], betas=(0.9, -0.1)), ValueError,
     "Invalid beta parameter at index 1"),
    ("Adam betas shape", lambda: gdcore.Adam([np.ones(2)], betas=(0.9,)), ValueError,
     "betas must be a pair"),
    ("Adam eps", lambda: gdcore.Adam([np.ones(2)], eps=-1.0), ValueError,
     "Invalid epsilon value"),
    ("AdamW weight_decay", lambda: gdcore.AdamW([np.ones(2)], weight_decay=-1), ValueError,
     "Invalid weight_decay value"),
    ("AdamW lr", lambda: gdcore.AdamW([np.ones(2)], lr=-1), ValueError, "Invalid learning rate"),
]


@pytest.mark.parametrize("make,exc,fragment", [pytest.param(*c[1:], id=c[0])
                                               for c in CONSTRUCTION])
def test_construction_rejects(make, exc, fragment):
    with pytest.raises(exc, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        make()


# -------------------------------------------------------------------- step
def stepped(name="Adam", **config):
    """An optimizer over three params, already stepped twice."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5).astype(f32), rng.standard_normal((2, 3)),
              rng.standard_normal(4).astype(f32)]
    opt = getattr(gdcore, name)([{"params": params[:2]}, {"params": params[2:]}], **config)
    for _ in range(2):
        opt.step([np.ones_like(p) for p in params])
    return opt, params


def good_grads(params):
    return [np.full_like(p, 0.5) for p in params]


def with_grad(k, value):
    def grads(params):
        g = good_grads(params)
        g[k] = value(params[k]) if callable(value) else value
        return g
    return grads


STEP = [
    ("too few grads", lambda ps: good_grads(ps)[:2], ValueError, "got 2 grads for 3 params"),
    ("too many grads", lambda ps: good_grads(ps) + [None], ValueError, "got 4 grads"),
    ("grads not iterable", lambda ps: 5, TypeError, "grads must be a sequence"),
    ("last grad wrong shape", with_grad(2, lambda p: np.ones(5, f32)), ValueError,
     r"grads\[2\] has shape \(5,\) but its param has shape \(4,\)"),
    ("last grad wrong dtype", with_grad(2, lambda p: np.ones(4, f64)), TypeError,
     r"grads\[2\] has dtype float64 but its param has dtype float32; gdcore does not cast"),
    ("python float list for float32", with_grad(0, [0.1] * 5), TypeError, "does not cast"),
    ("non-numeric grad", with_grad(1, lambda p: np.full(p.shape, "a")), TypeError,
     "not numeric"),
    ("object grad", with_grad(1, object()), TypeError, "not numeric"),
    ("bool grad", with_grad(0, lambda p: np.ones(p.shape, bool)), TypeError, "not numeric"),
    ("2-d grad for 1-d param", with_grad(0, lambda p: p.reshape(1, -1).copy()), ValueError,
     "shape"),
]


def snapshot(opt, params):
    return ([p.copy() for p in params], copy.deepcopy(opt.state_dict()))


def assert_unchanged(before, opt, params):
    old_params, old_sd = before
    for a, b in zip(old_params, params):
        np.testing.assert_array_equal(a, b)
    sd = opt.state_dict()
    assert sd["param_groups"] == old_sd["param_groups"]
    assert sd["state"].keys() == old_sd["state"].keys()
    for k, entry in old_sd["state"].items():
        assert entry.keys() == sd["state"][k].keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(sd["state"][k][key], value)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("grads,exc,fragment", [pytest.param(*c[1:], id=c[0]) for c in STEP])
def test_step_rejects_and_changes_nothing(name, grads, exc, fragment):
    config = CONFIGS[name][-1]                # the most state-hungry configuration
    opt, params = stepped(name, **config)
    before = snapshot(opt, params)
    with pytest.raises(exc, match=fragment):
        opt.step(grads(params))
    assert_unchanged(before, opt, params)


def test_failed_first_step_creates_no_state():
    p, q = np.ones(3), np.ones(2)
    opt = gdcore.Adam([p, q])
    with pytest.raises(ValueError):
        opt.step([np.ones(3), np.ones(3)])
    assert len(opt.state) == 0
    np.testing.assert_array_equal(p, 1)


def test_invalid_scheduled_lr_fails_at_step():
    opt, params = stepped("Adam")
    before = snapshot(opt, params)
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step(good_grads(params))
    opt.param_groups[1]["lr"] = before[1]["param_groups"][1]["lr"]
    assert_unchanged(before, opt, params)


def test_param_made_read_only_after_construction():
    opt, params = stepped("SGD", momentum=0.9)
    before = snapshot(opt, params)
    params[2].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[2\] is read-only"):
        opt.step(good_grads(params))
    params[2].flags.writeable = True
    assert_unchanged(before, opt, params)


def test_momentum_switched_on_later_fails_cleanly():
    opt, params = stepped("SGD")           # momentum 0: no buffers yet
    opt.param_groups[0]["momentum"] = 0.9
    before = snapshot(opt, params)
    with pytest.raises(TypeError):
        opt.step(with_grad(2, lambda p: np.ones(4, f64))(params))
    assert_unchanged(before, opt, params)
    assert "momentum_buffer" not in opt.state[params[0]]


# -------------------------------------------------------------- functional
def adam_buffers(dtype=f64, n=4):
    p = np.linspace(-1, 1, n).astype(dtype)
    return p, np.full(n, 0.25, dtype), np.zeros(n, dtype), np.zeros(n, dtype)


def call_adam(mutate, **kw):
    p, g, m, v = adam_buffers()
    args = mutate([p, g, m, v])
    kw.setdefault("step", 1)
    F.adam(*args, **kw)


FUNCTIONAL = [
    ("exp_avg shape", lambda a: [a[0], a[1], np.zeros(5), a[3]], {}, ValueError,
     r"exp_avg has shape \(5,\) but its param has shape \(4,\)"),
    ("exp_avg dtype", lambda a: [a[0], a[1], a[2].astype(f32), a[3]], {}, TypeError,
     "exp_avg has dtype float32 but its param has dtype float64"),
    ("exp_avg read-only", lambda a: [a[0], a[1], readonly(a[2]), a[3]], {}, ValueError,
     "exp_avg is read-only"),
    ("exp_avg non-contiguous", lambda a: [a[0], a[1], np.zeros(8)[::2], a[3]], {}, ValueError,
     "exp_avg is not C-contiguous"),
    ("state is the param", lambda a: [a[0], a[1], a[0], a[3]], {}, ValueError,
     "overlap in memory"),
    ("two states alias", lambda a: [a[0], a[1], a[2], a[2]], {}, ValueError, "overlap"),
    ("param not array", lambda a: [[0.0] * 4, a[1], a[2], a[3]], {}, TypeError,
     "param must be a numpy.ndarray"),
    ("step 0", lambda a: a, {"step": 0}, ValueError, "step must be >= 1"),
    ("step float", lambda a: a, {"step": 1.5}, TypeError, "step must be an int"),
    ("amsgrad without buffer", lambda a: a, {"amsgrad": True}, ValueError, "max_exp_avg_sq"),
    ("buffer without amsgrad", lambda a: a + [np.zeros(4)], {}, ValueError, "max_exp_avg_sq"),
    ("bad beta", lambda a: a, {"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter"),
    ("bad lr type", lambda a: a, {"lr": None}, TypeError, "lr must be a real number"),
]


@pytest.mark.parametrize("mutate,kw,exc,fragment", [pytest.param(*c[1:], id=c[0])
                                                    for c in FUNCTIONAL])
def test_functional_rejects(mutate, kw, exc, fragment):
    p, g, m, v = adam_buffers()
    seen = []

    def keep(args):
        seen.extend(args)
        return args
    with pytest.raises(exc, match=fragment):
        call_adam(lambda a: keep(mutate(a)), **kw)
    for a in seen:
        if isinstance(a, np.ndarray) and a.shape == (4,):
            assert a.tolist() in ([0.0] * 4, [0.25] * 4, np.linspace(-1, 1, 4).tolist())


def test_functional_other_optimizers_name_their_buffers():
    p = np.ones(3)
    with pytest.raises(ValueError, match="momentum_buffer"):
        F.sgd(p, np.ones(3), momentum=0.9, step=1)
    with pytest.raises(ValueError, match="step is needed with momentum != 0"):
        F.sgd(p, np.ones(3), np.zeros(3), momentum=0.9)
    with pytest.raises(ValueError, match=r"sum has shape \(2,\)"):
        F.adagrad(p, np.ones(3), np.zeros(2), step=1)
    with pytest.raises(ValueError, match="grad_avg is needed with centered=True"):
        F.rmsprop(p, np.ones(3), np.zeros(3), centered=True)
    np.testing.assert_array_equal(p, 1)


def test_multi_bad_last_buffer_changes_nothing():
    ps = [np.ones(3), np.ones(4), np.ones(5)]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    vs[2] = np.zeros(5, f32)
    with pytest.raises(TypeError, match=r"exp_avg_sqs\[2\] has dtype float32"):
        F.adam_multi(ps, [np.ones_like(p) for p in ps], ms, vs, steps=1)
    for p, m in zip(ps, ms):
        np.testing.assert_array_equal(p, 1)
        np.testing.assert_array_equal(m, 0)
    with pytest.raises(ValueError, match=r"params\[2\] and exp_avgs\[0\] overlap|"
                                         r"exp_avgs\[0\] and params\[2\] overlap"):
        F.adam_multi([ps[0], ps[1], ms[0]], [np.ones(3), np.ones(4), np.ones(3)],
                     [ms[0], ms[1], np.zeros(3)], [np.zeros(3), np.zeros(4), np.zeros(3)],
                     steps=1)


# ------------------------------------- grads that alias what the step writes
@pytest.mark.parametrize("alias", ["param", "exp_avg", "other param", "part of param"])
def test_grad_aliasing_a_written_buffer_reads_the_old_values(alias):
    """Such a grad is read from a copy taken before the step: never garbage."""
    def run(copy_grad):
        full = np.linspace(-1, 1, 12)
        a, b = full[4:], np.linspace(2, 3, 8)
        opt = gdcore.Adam([a, b], lr=0.1)
        opt.step([np.ones(8), np.ones(8)])
        source = {"param": a, "exp_avg": opt.state[a]["exp_avg"], "other param": b,
                  "part of param": full[:8]}[alias]
        g = source.copy() if copy_grad else source
        opt.step([g, np.full(8, 0.5)])
        return a.copy(), b.copy(), opt.state[a]["exp_avg"].copy()
    for x, y in zip(run(True), run(False)):
        np.testing.assert_array_equal(x, y)


def test_grad_is_the_param_in_functional_api():
    p = np.linspace(-1, 1, 9)
    q = p.copy()
    F.sgd(p, p, lr=0.1)
    F.sgd(q, q.copy(), lr=0.1)
    np.testing.assert_array_equal(p, q)
    np.testing.assert_allclose(p, 0.9 * np.linspace(-1, 1, 9))


def test_state_replaced_by_a_bad_array_is_reported_before_any_change():
    opt, params = stepped("Adam")
    opt.state[params[0]]["exp_avg"] = np.zeros(5, f64)          # wrong dtype (param is f32)
    before = snapshot(opt, params)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype float64"):
        opt.step(good_grads(params))
    assert_unchanged(before, opt, params)
    shared = opt.state[params[2]]["exp_avg_sq"]
    opt.state[params[0]]["exp_avg"] = np.zeros(5, f32)
    opt.state[params[2]]["exp_avg"] = shared                    # two state entries, one array
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match="overlap in memory"):
        opt.step(good_grads(params))
    assert_unchanged(before, opt, params)


# ------------------------------- tables derived from the declarations
# Every validation an optimizer declares (gdcore/family.py) with its example
# bad value: the NumPy class (constructor or param group), the functional
# API and torch.optim itself all reject it with the same message.
DECLARED_CHECKS = [pytest.param(decl, check, id=f"{decl.name}-{'-'.join(check.bad)}")
                   for decl in FAMILY for check in decl.checks]


@pytest.mark.parametrize("decl,check", DECLARED_CHECKS)
def test_declared_checks_reject_everywhere_with_torchs_message(decl, check):
    message = check.message.format(**{**decl.defaults(), **check.bad})
    fixed = any(h.fixed for h in decl.hyper if h.name in check.bad)
    p = np.ones(3)
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(gdcore, decl.name)([{"params": [p], **check.bad}])
    if not fixed:
        with pytest.raises(ValueError, match=re.escape(message)):
            getattr(gdcore, decl.name)([p], **check.bad)
        torch = pytest.importorskip("torch")
    if not fixed and check.torch:
        with pytest.raises(ValueError, match=re.escape(message)):
            getattr(torch.optim, decl.name)([torch.ones(3, requires_grad=True)], **check.bad)
    init_only = any(h.init_only for h in decl.hyper if h.name in check.bad)
    if not fixed and not init_only:
        config = dict(CONFIGS[decl.name][0], **check.bad)
        slots, scalars, kwargs = functional_args(decl.name, CONFIGS[decl.name][0], [p])
        for h in decl.hyper:
            if h.name in check.bad:
                if h.split:
                    kwargs.update(zip(h.c, config[h.name]))
                else:
                    kwargs[h.name] = config[h.name]
        with pytest.raises(ValueError, match=re.escape(message)):
            call_functional(decl.name, [p], [np.ones(3)], slots, scalars, 1, kwargs, False)
    np.testing.assert_array_equal(p, 1)


def _functional_cases():
    """Bad buffers for every state slot and scalar of every optimizer."""
    for decl in FAMILY:
        config = max(CONFIGS[decl.name],          # the config that uses the most state
                     key=lambda c: len(decl.state_in_use({**decl.defaults(), **c})))
        for s in range(len(decl.state)):
            name = decl.state[s].name
            yield decl, config, ("slot", s, "shape"), ValueError, f"{name} has shape (5,)"
            yield decl, config, ("slot", s, "dtype"), TypeError, f"{name} has dtype float32"
            yield decl, config, ("slot", s, "read-only"), ValueError, f"{name} is read-only"
            yield decl, config, ("slot", s, "is param"), ValueError, "overlap in memory"
        for s in range(len(decl.scalars)):
            name = decl.scalars[s].name
            yield decl, config, ("scalar", s, "float"), TypeError, f"{name} must be a 0-d"
            yield decl, config, ("scalar", s, "int"), TypeError, f"{name} has dtype int64"
            yield decl, config, ("scalar", s, "read-only"), ValueError, f"{name} is read-only"
        if decl.step == "required":
            yield decl, config, ("step", 0, 0), ValueError, "step must be >= 1"
            yield decl, config, ("step", 0, 1.5), TypeError, "step must be an int"
        yield decl, config, ("grad", 0, "shape"), ValueError, "grad has shape (5,)"


@pytest.mark.parametrize("decl,config,bad,exc,fragment", [
    pytest.param(*case, id=f"{case[0].name}-{case[2][0]}{case[2][1]}-{case[2][2]}")
    for case in _functional_cases()])
def test_functional_rejects_bad_buffers_and_changes_nothing(decl, config, bad, exc, fragment):
    p = np.linspace(-1, 1, 4)
    g = np.full(4, 0.25)
    slots, scalars, kwargs = functional_args(decl.name, config, [p])
    kind, s, what = bad
    step = 1
    if kind == "slot":
        good = slots[s][0]
        slots[s] = [{"shape": np.zeros(5), "dtype": good.astype(np.float32),
                     "read-only": readonly(good.copy()), "is param": p}[what]]
    elif kind == "scalar":
        good = scalars[s][0]
        scalars[s] = [{"float": float(good), "int": np.array(1),
                       "read-only": readonly(good.copy())}[what]]
    elif kind == "step":
        step = what
    else:
        g = np.ones(5)
    before = [p.copy()] + [lst[0].copy() for lst in slots + scalars
                           if lst is not None and isinstance(lst[0], np.ndarray)]
    with pytest.raises(exc, match=re.escape(fragment)):
        call_functional(decl.name, [p], [g], slots, scalars, step, kwargs, multi=False)
    after = [p] + [lst[0] for lst in slots + scalars
                   if lst is not None and isinstance(lst[0], np.ndarray)]
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
