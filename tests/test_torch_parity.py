"""gdcore.torch side by side with torch.optim (issue 9, sections 2 and 3).

Every optimizer of the family, with its defaults and with an option set
that uses every state buffer, runs next to torch.optim's class of the same
name over identical params (two groups; float32 and float64) and identical
grads.  Between steps, both get the same edit a user (or a library) makes
to an optimizer: replacing or clearing ``state``, replacing a state tensor,
changing ``step``, loading an earlier state_dict, replacing ``p.data`` by a
transposed or a complex tensor.  Afterwards gdcore must keep computing what
torch computes (params and state_dict, element by element), or, where
gdcore.torch documents an error (params it cannot step without
``fallback=True``), raise that TypeError, name the param and change nothing.

Also: a failed add_param_group, SGD without momentum keeps no state, a deep
copy of (model, optimizer), grads with the negative bit set, and
KeyboardInterrupt arriving anywhere during a step (all or nothing).
"""
import collections
import copy
import os
import signal
import sys

import numpy as np
import pytest

from conftest import CONFIGS, config_id
from gdcore.family import FAMILY

torch = pytest.importorskip("torch")
gt = pytest.importorskip("gdcore.torch")

import gdcore  # noqa: E402

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]
# element-wise: |ours - torch| <= atol + rtol * |torch|
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.float64: dict(rtol=1e-11, atol=1e-13),
       torch.complex64: dict(rtol=1e-5, atol=1e-6)}    # params torch steps (fallback)
SHAPES = [(5, 5), (7,), (3, 4)]         # group 0: params 0, 1; group 1: param 2
BY_NAME = {decl.name: decl for decl in FAMILY}


def _full_config(decl):
    """The configuration in CONFIGS that uses the most state buffers (then
    sets the most options): momentum, amsgrad, centered, ..."""
    return max(CONFIGS[decl.name],
               key=lambda c: (len(decl.state_in_use({**decl.defaults(), **c})), len(c)))


def _configs(decl):
    first, full = CONFIGS[decl.name][0], _full_config(decl)
    return [first] if first == full else [first, full]


def _state_names(decl, config):
    """The per-param state tensors torch keeps besides `step` for `config`."""
    return (decl.state_in_use({**decl.defaults(), **config})
            + tuple(s.name for s in decl.scalars))


# ------------------------------------------------------------------ harness
def make_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]


def make_pair(name, config, dtype, fallback=False):
    """(our params, gdcore.torch optimizer, torch's params, torch optimizer),
    equal params, two param groups (the second with half the lr)."""
    init = make_params(dtype)
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": config["lr"] * 0.5}]
    kwargs = {"fallback": True} if fallback else {}
    our_opt = getattr(gt, name)(groups(ours), **config, **kwargs)
    ref_opt = getattr(torch.optim, name)(groups(ref), **config)
    return ours, our_opt, ref, ref_opt


def grad(shape, dtype, t, k):
    """The grad of param k at step t (float64 draws, cast: equal in both)."""
    gen = torch.Generator().manual_seed(1000 * t + k)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def set_grads(params, t):
    for k, p in enumerate(params):
        p.grad = grad(p.shape, p.dtype, t, k)


def _close(got, want, what):
    assert torch.is_tensor(got), f"{what}: {type(got).__name__}, torch has a tensor"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, torch has {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    tol = TOL.get(want.dtype, TOL[torch.float32])
    a, b = got.detach().double().numpy(), want.detach().double().numpy()
    with np.errstate(invalid="ignore"):
        ok = (np.abs(a - b) <= tol["atol"] + tol["rtol"] * np.abs(b)) | (a == b) \
            | (np.isnan(a) & np.isnan(b))
    if not ok.all():                    # the fast check failed: numpy's report
        np.testing.assert_allclose(a, b, err_msg=what, **tol)


def assert_params_match(ours, ref, what):
    for k, (p, q) in enumerate(zip(ours, ref)):
        _close(p, q, f"{what}: param {k}")


def assert_states_match(our_opt, ref_opt, what):
    mine, theirs = our_opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert sorted(mine) == sorted(theirs), \
        f"{what}: state_dict()['state'] has entries for params {sorted(mine)}, " \
        f"torch for {sorted(theirs)}"
    for k, entry in theirs.items():
        assert sorted(mine[k]) == sorted(entry), \
            f"{what}: state of param {k} has {sorted(mine[k])}, torch {sorted(entry)}"
        for key, value in entry.items():
            got = mine[k][key]
            if key == "step":
                assert torch.is_tensor(got) and got.dtype == value.dtype, \
                    f"{what}: param {k} step {got!r}, torch {value!r}"
                assert got.item() == value.item(), \
                    f"{what}: param {k} step {got.item()}, torch {value.item()}"
            else:
                _close(got, value, f"{what}: param {k} state {key!r}")


def snapshot(opt, params):
    """Everything a rejected step must leave as it was."""
    state = {}
    for p, entry in list(opt.state.items()):
        state[id(p)] = {k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v))
                        for k, v in entry.items()}
    return [p.detach().clone() for p in params], state


def assert_unchanged(opt, params, before, what):
    old_params, old_state = before
    for k, (p, old) in enumerate(zip(params, old_params)):
        assert p.dtype == old.dtype and torch.equal(p.detach(), old), \
            f"{what}: param {k} was modified"
    now = {id(p): entry for p, entry in opt.state.items()}
    assert set(now) == set(old_state), \
        f"{what}: state entries changed ({len(old_state)} -> {len(now)} params)"
    for key, entry in old_state.items():
        assert sorted(now[key]) == sorted(entry), \
            f"{what}: state keys changed {sorted(entry)} -> {sorted(now[key])}"
        for name, value in entry.items():
            new = now[key][name]
            same = (torch.is_tensor(new) and new.dtype == value.dtype
                    and torch.equal(new, value)) if torch.is_tensor(value) else new == value
            assert same, f"{what}: state {name!r} was modified"


# -------------------------------------------------------------------- edits
class Edit:
    """An edit made identically to both optimizers.  apply(opt, params,
    earlier) with `earlier` a deep copy of the optimizer's state_dict after
    its first step.  at: the number of steps before the edit.  fallback:
    build gdcore's optimizer with fallback=True.  rejects: (k, must):
    without fallback, gdcore.torch documents a TypeError naming params[k]
    (must=False: it may instead step the param exactly as torch does);
    undo makes the params steppable again."""

    def __init__(self, apply, *, at=2, fallback=False, rejects=None, undo=None):
        self.apply, self.at, self.fallback = apply, at, fallback
        self.rejects, self.undo = rejects, undo


def _replace(name, p=0):
    def apply(opt, params, earlier):
        state = opt.state[params[p]]
        state[name] = torch.full_like(state[name], 0.5)
    return apply


def _step_edit(kind, p=2):
    def apply(opt, params, earlier):
        state = opt.state[params[p]]
        if kind == "fill_":
            state["step"].fill_(10)
        elif kind == "+=":
            state["step"] += 3
        else:
            state["step"] = torch.tensor(10.)
    return apply


def _reset_state(opt, params, earlier):
    opt.state = collections.defaultdict(dict)


def _transpose(opt, params, earlier):
    params[0].data = params[0].data.t()


def _untranspose(params):
    params[0].data = params[0].data.contiguous()


def _to_half(opt, params, earlier):
    # a dtype gdcore.torch does not step (complex; bfloat16 and float16 it does)
    params[1].data = params[1].data.to(torch.complex64)


def _undo_half(dtype):
    def undo(params):
        params[1].data = params[1].data.real.to(dtype).contiguous()
    return undo


def edits(decl, config):
    names = _state_names(decl, config)
    has_state = bool(names) or decl.counts_steps
    out = {
        "none": Edit(lambda opt, params, earlier: None),
        "state=defaultdict(dict)": Edit(_reset_state),
        "state.clear()": Edit(lambda opt, params, earlier: opt.state.clear()),
        "state[p1]={}": Edit(lambda opt, params, earlier: opt.state.__setitem__(params[1], {})),
        "load_state_dict(earlier)": Edit(lambda opt, params, earlier:
                                         opt.load_state_dict(earlier)),
        "p0.data=p0.data.t()": Edit(_transpose, rejects=(0, False), undo=_untranspose),
        "p0.data=p0.data.t(),fallback": Edit(_transpose, fallback=True),
        "p1.data=p1.data.half()": Edit(_to_half, rejects=(1, True)),
        "p1.data=p1.data.half(),fallback": Edit(_to_half, fallback=True),
        "p1.data=p1.data.half()@0": Edit(_to_half, at=0, rejects=(1, True)),
        "p1.data=p1.data.half()@0,fallback": Edit(_to_half, at=0, fallback=True),
    }
    if has_state:
        out["del state[p0]"] = Edit(lambda opt, params, earlier: opt.state.__delitem__(params[0]))
    for name in names:
        out[f"state[p0][{name!r}]=full_like(0.5)"] = Edit(_replace(name))
    if decl.counts_steps:
        out["state[p2]['step'].fill_(10)"] = Edit(_step_edit("fill_"))
        out["state[p2]['step']+=3"] = Edit(_step_edit("+="))
        out["state[p2]['step']=tensor(10.)"] = Edit(_step_edit("new"))
    return out


CASES = [pytest.param(decl.name, config, edit, id=f"{decl.name}-{config_id(config)}-{edit}")
         for decl in FAMILY for config in _configs(decl) for edit in edits(decl, config)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name,config,edit_name", CASES)
def test_state_edits_keep_gdcore_in_step_with_torch(name, config, edit_name, dtype):
    edit = edits(BY_NAME[name], config)[edit_name]
    ours, our_opt, ref, ref_opt = make_pair(name, config, dtype, fallback=edit.fallback)
    our_early = ref_early = None
    for t in range(edit.at):
        set_grads(ours, t)
        set_grads(ref, t)
        our_opt.step()
        ref_opt.step()
        if t == 0 and "load_state_dict" in edit_name:
            our_early = copy.deepcopy(our_opt.state_dict())
            ref_early = copy.deepcopy(ref_opt.state_dict())
    assert_params_match(ours, ref, "before the edit")

    edit.apply(our_opt, ours, our_early)
    edit.apply(ref_opt, ref, ref_early)

    t, end = edit.at, edit.at + 3       # three steps after the edit
    if edit.rejects:
        set_grads(ours, t)
        before = snapshot(our_opt, ours)
        try:
            our_opt.step()
        except TypeError as e:
            assert f"params[{edit.rejects[0]}]" in str(e), \
                f"the TypeError does not name params[{edit.rejects[0]}]: {e}"
            assert_unchanged(our_opt, ours, before, "after the rejected step")
            # torch's optimizer does not step either; both make the params steppable
            (edit.undo or _undo_half(dtype))(ours)
            (edit.undo or _undo_half(dtype))(ref)
            t += 1
            end = t + 3                 # three ordinary steps after the rejected one
        else:
            if edit.rejects[1]:
                pytest.fail("a complex param without fallback=True stepped without the "
                            "documented TypeError")
            set_grads(ref, t)
            ref_opt.step()
            assert_params_match(ours, ref, f"step {t} after {edit_name}")
            assert_states_match(our_opt, ref_opt, f"step {t} after {edit_name}")
            t += 1
    for t in range(t, end):
        set_grads(ours, t)
        set_grads(ref, t)
        try:
            ref_opt.step()
        except Exception as e:      # torch cannot step it: gdcore must not either
            with pytest.raises(type(e)):
                our_opt.step()
            return
        our_opt.step()
        assert_params_match(ours, ref, f"step {t} after {edit_name}")
        assert_states_match(our_opt, ref_opt, f"step {t} after {edit_name}")


# ---------------------------------------------------------- add_param_group
@pytest.mark.parametrize("name", list(CONFIGS))
def test_failed_add_param_group_adds_nothing(name):
    config = _full_config(BY_NAME[name])
    ours, our_opt, ref, ref_opt = make_pair(name, config, torch.float32)
    set_grads(ours, 0)
    set_grads(ref, 0)
    our_opt.step()
    ref_opt.step()
    half = torch.nn.Parameter(torch.ones(4, dtype=torch.complex64))
    groups = len(our_opt.param_groups)
    with pytest.raises(TypeError, match=r"params\[3\].*complex64"):
        our_opt.add_param_group({"params": [half]})
    assert len(our_opt.param_groups) == groups, "the rejected group was added"
    assert not any(q is half for g in our_opt.param_groups for q in g["params"])
    assert our_opt.state_dict()["param_groups"] == ref_opt.state_dict()["param_groups"]
    for t in (1, 2):
        set_grads(ours, t)
        set_grads(ref, t)
        half.grad = torch.ones(4, dtype=torch.complex64)
        our_opt.step()
        ref_opt.step()
        assert torch.equal(half.detach(), torch.ones(4, dtype=torch.complex64)), \
            "the param of the rejected group was stepped"
        assert half not in our_opt.state
        assert_params_match(ours, ref, f"step {t}")
        assert_states_match(our_opt, ref_opt, f"step {t}")


# ------------------------------------------------------ SGD without momentum
SGD_NO_MOMENTUM = [c for c in CONFIGS["SGD"] if not c.get("momentum")]


@pytest.mark.parametrize("config", SGD_NO_MOMENTUM, ids=map(config_id, SGD_NO_MOMENTUM))
def test_sgd_without_momentum_keeps_no_state(config):
    ours, our_opt, ref, ref_opt = make_pair("SGD", config, torch.float32)
    for t in range(3):
        set_grads(ours, t)
        set_grads(ref, t)
        our_opt.step()
        ref_opt.step()
    assert ref_opt.state_dict()["state"] == {}
    assert our_opt.state_dict()["state"] == {}
    assert len(our_opt.state) == len(ref_opt.state) == 0
    assert_params_match(ours, ref, "after 3 steps")


# ----------------------------------------------------------------- deepcopy
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_deepcopy_of_model_and_optimizer(name, dtype):
    config = _full_config(BY_NAME[name])
    init = make_params(dtype)
    models = [torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in init])
              for _ in range(2)]
    our_model, ref_model = models
    our_opt = getattr(gt, name)(our_model.parameters(), **config)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), **config)
    for t in range(2):
        set_grads(list(our_model), t)
        set_grads(list(ref_model), t)
        our_opt.step()
        ref_opt.step()
    our_model2, our_opt2 = copy.deepcopy((our_model, our_opt))
    ref_model2, ref_opt2 = copy.deepcopy((ref_model, ref_opt))
    assert [p is q for p, q in zip(our_opt2.param_groups[0]["params"], our_model2)] == \
        [p is q for p, q in zip(ref_opt2.param_groups[0]["params"], ref_model2)]
    def two_steps(ours, opt, ref, ref_opt, label):
        for t in (2, 3):
            set_grads(list(ours), t)
            set_grads(list(ref), t)
            opt.step()
            ref_opt.step()
            assert_params_match(list(ours), list(ref), f"{label}, step {t}")
            assert_states_match(opt, ref_opt, f"{label}, step {t}")

    before = snapshot(our_opt, list(our_model))
    two_steps(our_model2, our_opt2, ref_model2, ref_opt2, "copy")
    assert_unchanged(our_opt, list(our_model), before, "the original, after the copy stepped")
    copied = snapshot(our_opt2, list(our_model2))
    two_steps(our_model, our_opt, ref_model, ref_opt, "original")
    assert_unchanged(our_opt2, list(our_model2), copied, "the copy, after the original stepped")


# --------------------------------------------------------- negative-bit grads
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_grads_with_the_negative_bit_step_as_torch(name, dtype):
    config = _full_config(BY_NAME[name])
    ours, our_opt, ref, ref_opt = make_pair(name, config, dtype)
    for t in range(3):
        for params in (ours, ref):
            set_grads(params, t)
            for k in (1, 2):            # one param in each group
                params[k].grad = torch._neg_view(-params[k].grad)
                assert params[k].grad.is_neg()
        ref_opt.step()
        our_opt.step()
        assert_params_match(ours, ref, f"step {t}")
        assert_states_match(our_opt, ref_opt, f"step {t}")


# ------------------------------------------------------- KeyboardInterrupt
def _check_all_or_nothing(ours, our_opt, before, ref, ref_opt, t, what):
    """After an interrupted step t: every param stepped (and the state says
    so) or nothing changed; then ordinary steps match torch's."""
    old_params = before[0]
    changed = [not torch.equal(p.detach(), b) for p, b in zip(ours, old_params)]
    if any(changed) and not all(changed):
        return f"{what}: partially stepped (params changed: {changed})"
    try:
        if not any(changed):
            assert_unchanged(our_opt, ours, before, what + ": params unchanged, but")
        else:
            set_grads(ref, t)
            ref_opt.step()
            assert_params_match(ours, ref, what + ": stepped")
            assert_states_match(our_opt, ref_opt, what + ": stepped")
        set_grads(ours, t + 1)
        set_grads(ref, t + 1)
        ref_opt.step()
        our_opt.step()
        assert_params_match(ours, ref, what + ": the next step")
        assert_states_match(our_opt, ref_opt, what + ": the next step")
    except AssertionError as e:
        return str(e).splitlines()[0]
    except Exception as e:
        return f"{what}: {type(e).__name__}: {e}"
    return None


class InterruptingFloat:
    """A learning rate whose n-th float() raises KeyboardInterrupt (as a
    signal handler would, at that point of the step)."""

    def __init__(self, value, n):
        self.value, self.n, self.calls = value, n, 0

    def __float__(self):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.value


def _pair_before_step(name, config, warmup):
    """A fresh (gdcore.torch, torch) pair after `warmup` steps on both, with
    the grads of the next step set on ours and a snapshot of ours taken."""
    ours, our_opt, ref, ref_opt = make_pair(name, config, torch.float32)
    for t in range(warmup):
        set_grads(ours, t)
        set_grads(ref, t)
        our_opt.step()
        ref_opt.step()
    set_grads(ours, warmup)
    return ours, our_opt, ref, ref_opt, snapshot(our_opt, ours)


@pytest.mark.parametrize("step", ["first step", "later step"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_interrupt_in_a_groups_lr_is_all_or_nothing(name, step):
    """The second group's lr raises KeyboardInterrupt on its n-th float(),
    for every n up to the number of calls a step makes (first step: state
    created; later step: the cached path)."""
    config = _full_config(BY_NAME[name])
    warmup = 1 if step == "later step" else 0
    failures = []
    for n in range(1, 50):
        ours, our_opt, ref, ref_opt, before = _pair_before_step(name, config, warmup)
        lr = our_opt.param_groups[1]["lr"]
        our_opt.param_groups[1]["lr"] = InterruptingFloat(lr, n)
        try:
            our_opt.step()
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            our_opt.param_groups[1]["lr"] = lr
        if not interrupted:
            break
        problem = _check_all_or_nothing(ours, our_opt, before, ref, ref_opt, warmup,
                                        f"interrupt at float(lr) call {n}")
        if problem:
            failures.append(problem)
    assert n > 1, "the injection point was never reached"
    assert not failures, "\n".join(failures)


GDCORE_DIR = os.path.dirname(os.path.abspath(gdcore.__file__))


class InterruptAtLine:
    """A trace function that sends SIGINT (Ctrl-C) to the process at the n-th
    line gdcore's Python code executes: Python's handler then raises
    KeyboardInterrupt at the next point where signal handlers run."""

    def __init__(self, n):
        self.n, self.count, self.where = n, 0, None

    def _ours(self, code):
        name = code.co_filename
        return name.startswith(GDCORE_DIR) or name.startswith("<gdcore")

    def __call__(self, frame, event, arg):
        if event == "call":
            return self if self._ours(frame.f_code) else None
        if event == "line":
            self.count += 1
            if self.count == self.n:
                self.where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                signal.raise_signal(signal.SIGINT)      # as Ctrl-C: Python's handler runs next
        return self


@pytest.mark.parametrize("name,step", [("Adam", "first step"), ("Adam", "later step"),
                                       ("SGD", "later step")])
def test_interrupt_at_any_line_of_a_step_is_all_or_nothing(name, step):
    """KeyboardInterrupt at each line in turn that gdcore's Python code runs
    during a two-group step (first step: state created; later step: the
    cached path).  (The code is the same for every optimizer; SGD's first
    step is left to the float(lr) test above, to keep the run short.)"""
    config = _full_config(BY_NAME[name])
    warmup = 1 if step == "later step" else 0
    failures = {}                       # problem: [where]
    n = 0
    while True:
        n += 1
        assert n < 20000, "the step never completed"
        ours, our_opt, ref, ref_opt, before = _pair_before_step(name, config, warmup)
        tracer = InterruptAtLine(n)
        old = sys.gettrace()
        grad_mode = torch.is_grad_enabled()
        sys.settrace(tracer)
        try:
            our_opt.step()
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(old)
            # the handler may run inside torch.no_grad's own __exit__ (torch's
            # Python code), which then leaves grad mode off: not gdcore's state
            torch.set_grad_enabled(grad_mode)
        if not interrupted:
            break
        problem = _check_all_or_nothing(ours, our_opt, before, ref, ref_opt, warmup,
                                        "after the interrupt")
        if problem:
            failures.setdefault(problem, []).append(f"{n}@{tracer.where}")
    assert n > 1
    assert not failures, \
        f"{sum(map(len, failures.values()))} of {n - 1} interrupt points (line event@line):\n" + \
        "\n".join(f"{problem}\n    at {', '.join(where[:8])}"
                  f"{f' and {len(where) - 8} more' if len(where) > 8 else ''}"
                  for problem, where in failures.items())
