"""gdcore.torch's steady-state step (issue 10, section 2): grads and params
read in C (Plan.run_torch) instead of as NumPy views, through torch's C++
API (gdcore/_torch_reads.cpp) or torch's DLPack exchange table: every test
runs with both readers.

It must be taken (after the first steps, with every param given a dense
grad), give the bits the general path gives, and accept and reject what
the general path accepts and rejects: every grad or param it does not take
(negative bit, other dtype or shape, not contiguous, overlapping a param, a
torch function mode active) goes to the general path, whose result equals
torch's; a param whose memory was replaced (``p.data =``, ``p.set_()``)
is followed.
"""
import pytest

from test_torch_parity import (assert_params_match, assert_states_match, assert_unchanged,
                               make_pair, set_grads, snapshot)

torch = pytest.importorskip("torch")
gt = pytest.importorskip("gdcore.torch")

from gdcore import _core  # noqa: E402

NAMES = ["Adam", "SGD", "ASGD", "Rprop"]       # slots, momentum, scalar state, no step use
CONFIG = {"Adam": dict(lr=1e-2), "SGD": dict(lr=1e-2, momentum=0.9),
          "ASGD": dict(lr=1e-2, t0=1.0), "Rprop": dict(lr=1e-2)}


@pytest.fixture(autouse=True, params=["cpp", "dlpack"])
def reader(request):
    """The reader of the C path: torch's C++ API (skipped where it could not
    be built: test_torch_reads.py fails where a compiler exists) or the
    DLPack exchange table."""
    if request.param == "cpp" and not gt._cpp_reads():
        from gdcore import _torch_build
        pytest.skip(f"the C++ reads are not available: {_torch_build.STATUS}")
    previous = _core.use_torch_reads(request.param == "cpp")
    yield request.param
    _core.use_torch_reads(previous)


def test_torch_has_the_c_reads():
    """torch 2.13 (the tested version) publishes the DLPack exchange table,
    so the suite exercises the C reads."""
    assert gt._C_READS


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_steady_steps_take_the_c_path_and_match_torch(name, dtype, fast_path_calls):
    ours, our_opt, ref, ref_opt = make_pair(name, CONFIG[name], dtype)
    for t in range(6):
        set_grads(ours, t)
        set_grads(ref, t)
        our_opt.step()
        ref_opt.step()
        assert_params_match(ours, ref, f"{name} step {t}")
    assert_states_match(our_opt, ref_opt, name)
    assert fast_path_calls.count(1) >= 4, fast_path_calls


@pytest.mark.parametrize("name", NAMES)
def test_c_path_and_general_path_give_the_same_bits(name, monkeypatch):
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(gt._core, "run_plan_torch", lambda *args: 0)
        ours, opt, _, _ = make_pair(name, CONFIG[name], torch.float32)
        for t in range(5):
            set_grads(ours, t)
            opt.step()
        runs.append(([p.detach().clone() for p in ours], opt.state_dict()))
    for a, b in zip(runs[0][0], runs[1][0]):
        assert torch.equal(a, b)
    for k, entry in runs[0][1]["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, runs[1][1]["state"][k][key]), (k, key)


def _pair_in_steady_state(name="Adam", dtype=torch.float32, fallback=False):
    ours, our_opt, ref, ref_opt = make_pair(name, CONFIG[name], dtype, fallback=fallback)
    for t in range(3):
        set_grads(ours, t)
        set_grads(ref, t)
        our_opt.step()
        ref_opt.step()
    return ours, our_opt, ref, ref_opt


def _step_both(ours, our_opt, ref, ref_opt, t, what):
    our_opt.step()
    ref_opt.step()
    assert_params_match(ours, ref, what)
    assert_states_match(our_opt, ref_opt, what)


# Grads the C path does not take: each gives torch's result through the
# general path (and the next plain grads the C path again).
def _neg_view(g):
    return torch._neg_view(g.neg())            # same values, negative bit set


def _transposed(g):
    return g.t().contiguous().t() if g.dim() == 2 and g.shape[0] != g.shape[1] else None


GRAD_EDITS = {
    "negative bit": _neg_view,
    "not contiguous": _transposed,
    "a Parameter": lambda g: torch.nn.Parameter(g.clone()),
    "a Tensor subclass": lambda g: g.clone().as_subclass(_Subclass),
    "misaligned": lambda g: _misaligned(g),
}


def _misaligned(g):
    """g's values in memory one byte off its dtype's alignment (torch makes
    such tensors only from foreign memory: NumPy here)."""
    import numpy as np
    raw = np.zeros(g.numel() * g.element_size() + 1, np.uint8)[1:]
    out = raw.view(g.numpy().dtype).reshape(tuple(g.shape))
    out[...] = g.numpy()
    return torch.from_numpy(out)


class _Subclass(torch.Tensor):
    """A Python subclass with no dispatch of its own (no Python dispatch key:
    only its Python object tells it from a torch.Tensor)."""


@pytest.mark.parametrize("edit", sorted(GRAD_EDITS))
def test_grads_the_c_path_does_not_take_step_as_torch(edit, fast_path_calls):
    ours, our_opt, ref, ref_opt = _pair_in_steady_state()
    set_grads(ours, 3)
    set_grads(ref, 3)
    edited = [GRAD_EDITS[edit](p.grad) for p in ours]
    assert any(g is not None for g in edited)
    for p, g in zip(ours, edited):
        if g is not None:
            p.grad = g
    counts = [p.grad._use_count() for p in ours]
    del fast_path_calls[:]
    _step_both(ours, our_opt, ref, ref_opt, 3, edit)
    assert fast_path_calls == [0]
    assert [p.grad._use_count() for p in ours] == counts    # no reference kept
    set_grads(ours, 4)
    set_grads(ref, 4)
    _step_both(ours, our_opt, ref, ref_opt, 4, f"{edit}, then plain grads")


def test_grad_sharing_memory_with_a_param_steps_as_torch(fast_path_calls):
    """p.grad = p.detach(): the C path sees the overlap with a written
    buffer; the general path reads the grad from a copy, as torch's
    for-loop Adam does (the grad is read before the param is written)."""
    ours, our_opt, ref, ref_opt = _pair_in_steady_state()
    for ps in (ours, ref):
        set_grads(ps, 3)
        ps[1].grad = ps[1].detach()
    del fast_path_calls[:]
    _step_both(ours, our_opt, ref, ref_opt, 3, "grad aliasing its param")
    assert fast_path_calls == [0]


def test_grad_of_another_dtype_is_refused_by_name_and_changes_nothing():
    ours, our_opt, _, _ = _pair_in_steady_state()
    set_grads(ours, 3)
    ours[1].grad.data = ours[1].grad.data.double()
    before = snapshot(our_opt, ours)
    with pytest.raises(TypeError, match=r"grads\[1\]|params\[1\]"):
        our_opt.step()
    assert_unchanged(our_opt, ours, before, "grad of another dtype")


def test_grad_of_another_shape_is_refused_by_name_and_changes_nothing(fast_path_calls):
    """Same size, another shape (torch's grad setter refuses it; ``.data =``
    does not)."""
    ours, our_opt, _, _ = _pair_in_steady_state()
    set_grads(ours, 3)
    assert ours[0].dim() == 2
    ours[0].grad.data = ours[0].grad.data.reshape(-1)
    before = snapshot(our_opt, ours)
    del fast_path_calls[:]
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(25,\)"):
        our_opt.step()
    assert fast_path_calls == [0]
    assert_unchanged(our_opt, ours, before, "grad of another shape")


def test_param_given_another_shape_is_refused_by_name_and_changes_nothing(fast_path_calls):
    """p.data = p.data.view(-1): the same memory, another shape; torch's
    state has the old shape, which the general path reports."""
    ours, our_opt, _, _ = _pair_in_steady_state()
    with torch.no_grad():
        ours[0].data = ours[0].data.view(-1)
    set_grads(ours, 3)
    before = snapshot(our_opt, ours)
    del fast_path_calls[:]
    with pytest.raises(ValueError, match=r"\[0\] has shape \(5, 5\) but its param has "
                                         r"shape \(25,\)"):
        our_opt.step()
    assert fast_path_calls[0] == 2
    assert_unchanged(our_opt, ours, before, "param of another shape")


def test_param_memory_shared_copy_on_write_is_never_written_through(fast_path_calls):
    """A lazy clone shares the param's memory until either is written: the
    step must leave the clone's values alone (torch makes the param's
    memory its own; gdcore then follows the param to its new memory)."""
    ours, our_opt, ref, ref_opt = _pair_in_steady_state()
    lazy = torch._lazy_clone(ours[0].detach())
    kept = ours[0].detach().clone()
    for t in (3, 4):
        set_grads(ours, t)
        set_grads(ref, t)
        _step_both(ours, our_opt, ref, ref_opt, t, "copy-on-write param")
    assert torch.equal(lazy, kept)
    assert 2 in fast_path_calls and fast_path_calls[-1] == 1, fast_path_calls


@pytest.mark.parametrize("nbytes", [0, 8])
def test_grad_past_the_end_of_its_resized_storage_is_refused_by_name(nbytes, fast_path_calls):
    """g.untyped_storage().resize_(n) leaves g pointing past its storage's
    end (torch's own Adam then reads freed memory): refused, nothing
    changed."""
    ours, our_opt, _, _ = _pair_in_steady_state()
    set_grads(ours, 3)
    ours[2].grad.untyped_storage().resize_(nbytes)
    before = snapshot(our_opt, ours)
    del fast_path_calls[:]
    with pytest.raises(ValueError, match=r"the grad of params\[2\] extends past the end of "
                                         rf"its storage \({nbytes} bytes"):
        our_opt.step()
    assert fast_path_calls == [0]
    assert_unchanged(our_opt, ours, before, "grad past its storage")


def test_param_or_state_past_the_end_of_its_resized_storage_is_refused_by_name(
        fast_path_calls):
    """(gdcore's views make the memory it steps unresizable: a param can get
    such memory only by p.data =, a state tensor by replacement.)"""
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = gt.Adam([p], lr=1e-2)
    for _ in range(3):
        p.grad = torch.randn(4, 3)
        opt.step()
    with pytest.raises(RuntimeError, match="not resizable"):
        p.untyped_storage().resize_(0)
    short = torch.zeros(4, 3)
    short.untyped_storage().resize_(0)
    with torch.no_grad():
        p.data = short
    del fast_path_calls[:]
    with pytest.raises(ValueError, match=r"params\[0\] extends past the end of its storage"):
        opt.step()
    assert fast_path_calls == [2]
    ours, our_opt, _, _ = _pair_in_steady_state()
    set_grads(ours, 3)
    short = torch.zeros_like(ours[0])
    short.untyped_storage().resize_(4)
    our_opt.state[ours[0]]["exp_avg"] = short
    with pytest.raises(ValueError, match=r"state tensor 'exp_avg' extends past the end"):
        our_opt.step()


def test_the_reader_in_use_is_the_one_selected(reader, fast_path_calls):
    """Grads fresh from backward() have no Python object: the C++ reads make
    none, the DLPack reads make one per grad (the .grad getter)."""
    import gc
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = gt.Adam(model.parameters(), lr=1e-2)
    x = torch.ones(2, 4)

    def tensors():
        return sum(type(o) is torch.Tensor for o in gc.get_objects())
    for t in range(4):
        opt.zero_grad()
        model(x * t).sum().backward()
        before = tensors()
        opt.step()
        made = tensors() - before
    assert fast_path_calls[-1] == 1
    assert made == (0 if reader == "cpp" else 4), made


def test_a_missing_grad_skips_its_param_as_torch(fast_path_calls):
    ours, our_opt, ref, ref_opt = _pair_in_steady_state()
    for ps in (ours, ref):
        set_grads(ps, 3)
        ps[0].grad = None
    _step_both(ours, our_opt, ref, ref_opt, 3, "missing grad")
    for t in (4, 5):
        set_grads(ours, t)
        set_grads(ref, t)
        _step_both(ours, our_opt, ref, ref_opt, t, "all grads again")



@pytest.mark.parametrize("name", NAMES)
def test_step_numbers_follow_the_c_path_into_the_general_paths(name, fast_path_calls):
    """The C path advances only torch's `step` counters (the engine's own
    step numbers are brought up to them before any other path steps): C
    steps, a step on the cached plan (a negated grad), C steps, a general
    step (a missing grad), C steps, a step whose counters torch's state
    shows changed; every step equals torch's, step counters included."""
    ours, our_opt, ref, ref_opt = _pair_in_steady_state(name)

    def both(t, edit=None):
        for ps in (ours, ref):
            set_grads(ps, t)
            if edit:
                edit(ps)
        _step_both(ours, our_opt, ref, ref_opt, t, f"{name}, step {t}")

    def negated(ps):
        ps[1].grad = _neg_view(ps[1].grad)

    def missing(ps):
        ps[0].grad = None

    def counter_edited(ps):
        for opt, params in ((our_opt, ours), (ref_opt, ref)):
            step = opt.state[params[2]].get("step")
            if torch.is_tensor(step):
                step += 2
    del fast_path_calls[:]
    for t, edit in ((3, None), (4, None), (5, negated), (6, None), (7, None), (8, missing),
                    (9, None), (10, None), (11, None), (12, counter_edited), (13, None),
                    (14, None)):
        both(t, edit)
    assert fast_path_calls.count(1) >= 6, fast_path_calls


class CountingMode(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_torch_function_mode_takes_the_general_path(fast_path_calls):
    """Under a torch function mode, .grad and is_neg() would run its Python
    handler: the C path is not taken (its reads must run no Python code)."""
    ours, our_opt, ref, ref_opt = _pair_in_steady_state()
    set_grads(ours, 3)
    set_grads(ref, 3)
    del fast_path_calls[:]
    with CountingMode():
        our_opt.step()
    ref_opt.step()
    assert fast_path_calls == [0]
    assert_params_match(ours, ref, "under a torch function mode")


# Param memory replaced between steps: followed (the engine is rebuilt).
def _new_memory(p):
    p.data = p.data.clone()


def _set_(p):
    p.set_(p.detach().clone())


def _bigger(p):
    p.data = torch.cat([p.data.flatten(), p.data.flatten()])[:p.numel()].view(p.shape)


PARAM_EDITS = {"p.data = clone": _new_memory, "p.set_(clone)": _set_,
               "p.data = view into a bigger buffer": _bigger}


@pytest.mark.parametrize("edit", sorted(PARAM_EDITS))
def test_param_memory_replaced_is_followed(edit, fast_path_calls):
    ours, our_opt, ref, ref_opt = _pair_in_steady_state()
    for ps in (ours, ref):
        with torch.no_grad():
            for p in ps:
                PARAM_EDITS[edit](p)
    for t in (3, 4, 5):
        set_grads(ours, t)
        set_grads(ref, t)
        _step_both(ours, our_opt, ref, ref_opt, t, f"{edit}, step {t}")
    assert 2 in fast_path_calls


def test_param_given_the_negative_bit_is_refused_by_name_or_falls_back():
    """p.data = a negated view of its own memory: same memory, shape and
    dtype, but the values are minus the memory.  Refused like any param the
    kernels cannot update (torch's fused and foreach Adam refuse it too);
    with fallback=True torch's for-loop steps it."""
    ours, our_opt, _, _ = _pair_in_steady_state()
    with torch.no_grad():
        ours[1].data = torch._neg_view(ours[1].data)
    set_grads(ours, 3)
    before = snapshot(our_opt, ours)
    with pytest.raises(TypeError, match=r"params\[1\].*negated"):
        our_opt.step()
    assert_unchanged(our_opt, ours, before, "negated param")

    ours, our_opt, ref, ref_opt = _pair_in_steady_state(fallback=True)
    for ps in (ours, ref):
        with torch.no_grad():
            ps[1].data = torch._neg_view(ps[1].data)
    for t in (3, 4):
        set_grads(ours, t)
        set_grads(ref, t)
        our_opt.step()
        ref_opt.step()
        assert_params_match(ours, ref, f"negated param with fallback, step {t}")


def test_empty_params_step_on_the_c_path(fast_path_calls):
    ps = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.empty(0)),
          torch.nn.Parameter(torch.empty(3, 0))]
    opt = gt.Adam(ps, lr=1e-2)
    for _ in range(4):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    assert fast_path_calls[-1] == 1
    assert opt.state[ps[0]]["step"].item() == 4


def test_param_with_more_dims_than_the_plan_keeps_steps_as_torch(fast_path_calls):
    """A 9-d param (the plan keeps shapes up to 8 dims): every step takes the
    general path, and never asks for a rebuild (which would rebuild the
    engine every step)."""
    shape = (2, 1, 3, 1, 2, 1, 1, 2, 2)
    ours = [torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(0)))]
    ref = [torch.nn.Parameter(ours[0].detach().clone())]
    our_opt, ref_opt = gt.Adam(ours, lr=1e-2), torch.optim.Adam(ref, lr=1e-2)
    for t in range(5):
        g = torch.randn(shape, generator=torch.Generator().manual_seed(t + 1))
        ours[0].grad, ref[0].grad = g.clone(), g.clone()
        our_opt.step()
        ref_opt.step()
    assert_params_match(ours, ref, "9-d Adam")
    assert 2 not in fast_path_calls[1:], fast_path_calls
    assert fast_path_calls.count(0) >= 3, fast_path_calls


class SwappingFloat(float):
    """A learning rate whose __float__ replaces a param's memory (user code
    run by the step itself, after the param was checked)."""
    def __new__(cls, value, param):
        out = super().__new__(cls, value)
        out.param = param
        return out

    def __float__(self):
        with torch.no_grad():
            self.param.data = self.param.data.clone()
        return float.__float__(self)


def test_param_memory_replaced_by_code_the_step_runs_is_never_written_freed():
    """The engine's arrays pin the memory they view, and the C path checks
    the params after the last user code: the step either follows the new
    memory or says what happened; it never writes memory that was freed."""
    ours, our_opt, _, _ = _pair_in_steady_state()
    set_grads(ours, 3)
    our_opt.param_groups[0]["lr"] = SwappingFloat(1e-2, ours[0])
    for _ in range(3):
        try:
            our_opt.step()
        except RuntimeError as exc:
            assert "memory changed during the step" in str(exc)
        assert torch.isfinite(ours[0]).all()


def test_state_tensor_memory_changed_in_place_is_kept_alive():
    """state[name].set_(other) is not followed (documented: replace state
    tensors, or load_state_dict), but the memory gdcore updates stays
    alive: later steps write it, not freed memory (reused here by other
    tensors of the same size)."""
    ours, our_opt, _, _ = _pair_in_steady_state()
    state = our_opt.state[ours[0]]
    state["exp_avg"] = state["exp_avg"].clone()      # torch's memory, not the engine's
    set_grads(ours, 3)
    our_opt.step()                                  # the engine now views the clone
    exp_avg = state["exp_avg"]
    exp_avg.set_(torch.zeros_like(exp_avg))         # the clone's first memory: only gdcore's
    filler = [torch.full_like(exp_avg, 7.0) for _ in range(200)]
    for t in (4, 5, 6):
        set_grads(ours, t)
        our_opt.step()
    assert all(bool((f == 7.0).all()) for f in filler), "a step wrote freed memory"
    assert torch.isfinite(ours[0]).all()
