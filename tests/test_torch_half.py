"""gdcore.torch with bfloat16 and float16 params (issue 11, section 4): the
default matches torch's fused kernels (state in the param's dtype, rounding
to nearest; within 1 ulp per step, tests/half.py's rule), state dicts move
both ways, and gdcore's additions (state_dtype, rounding, seed) reach the
kernels and the state dict."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")

import gdcore  # noqa: E402
import gdcore.torch as gt  # noqa: E402
from half import BF16, F16, far_elements  # noqa: E402

TORCH_DTYPES = {"bfloat16": (torch.bfloat16, BF16), "float16": (torch.float16, F16)}


def numpy_of(t, dtype):
    return t.detach().view(torch.int16).numpy().view(dtype)


def randn(n, tdtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * torch.exp(torch.rand(n, generator=g) * 4 - 3)).to(tdtype)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad"])
@pytest.mark.parametrize("dtypes", TORCH_DTYPES.values(), ids=TORCH_DTYPES.keys())
def test_default_matches_torch_fused_per_step(name, dtypes):
    tdtype, dtype = dtypes
    p = torch.nn.Parameter(randn(3001, tdtype, 0))
    ours = getattr(gt, name)([p], lr=1e-2)
    for t in range(5):
        q = torch.nn.Parameter(p.detach().clone())
        ref = getattr(torch.optim, name)([q], lr=1e-2, fused=True)
        if p in ours.state:
            ref.state[q] = {k: v.clone() for k, v in ours.state[p].items()}
        g = randn(3001, tdtype, 10 + t)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert not far_elements(numpy_of(p, dtype), numpy_of(q, dtype).astype(np.float64),
                                dtype).any(), (name, t)
        for key, value in ref.state[q].items():
            if key != "step":
                assert ours.state[p][key].dtype == tdtype
                assert not far_elements(numpy_of(ours.state[p][key], dtype),
                                        numpy_of(value, dtype).astype(np.float64),
                                        dtype).any(), (key, t)


@pytest.mark.parametrize("dtypes", TORCH_DTYPES.values(), ids=TORCH_DTYPES.keys())
def test_state_dicts_move_both_ways(dtypes):
    tdtype, _ = dtypes
    start = randn(500, tdtype, 1)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours, ref = gt.Adam([a], lr=1e-2), torch.optim.Adam([b], lr=1e-2, fused=True)
    for t in range(3):
        g = randn(500, tdtype, 20 + t)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    # gdcore.torch's state dict into torch, torch's into gdcore.torch: the
    # same tensors, in the param's dtype
    c, d = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    into_torch = torch.optim.Adam([c], lr=1e-2, fused=True)
    # (deep copies: a state dict holds the optimizer's own tensors, which a
    # loading torch optimizer keeps when no cast is needed)
    into_torch.load_state_dict(copy.deepcopy(ours.state_dict()))
    into_ours = gt.Adam([d], lr=1e-2)
    into_ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    for mine, theirs in ((into_torch.state[c], ours.state[a]), (into_ours.state[d], ref.state[b])):
        assert sorted(mine) == sorted(theirs)
        for key in ("exp_avg", "exp_avg_sq"):
            assert mine[key].dtype == tdtype and torch.equal(mine[key], theirs[key])
        assert float(mine["step"]) == float(theirs["step"]) == 3
    # each continues as the optimizer it was loaded from
    g = randn(500, tdtype, 30)
    for p, opt in ((a, ours), (c, into_torch), (b, ref), (d, into_ours)):
        p.grad = g.clone()
        opt.step()
    assert not far_elements(numpy_of(d, dtypes[1]), numpy_of(b, dtypes[1]).astype(np.float64),
                            dtypes[1]).any()
    assert not far_elements(numpy_of(a, dtypes[1]), numpy_of(c, dtypes[1]).astype(np.float64),
                            dtypes[1]).any()


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan"])
@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["state16", "state32"])
def test_storage_options_give_the_numpy_classes_bits(rounding, state_dtype):
    """gdcore.torch runs the same kernels as gdcore's NumPy classes: the same
    options give the same bits; its state holds the same dtypes and, for
    "kahan", the compensation (in the state dict too)."""
    start = [randn(n, torch.bfloat16, n) for n in (2100, 33)]
    params = [torch.nn.Parameter(s.clone()) for s in start]
    ours = gt.AdamW(params, lr=1e-2, rounding=rounding, state_dtype=state_dtype, seed=7)
    arrays = [numpy_of(s, BF16).copy() for s in start]
    numpy_opt = gdcore.AdamW(arrays, lr=1e-2, rounding=rounding, seed=7,
                             state_dtype=None if state_dtype is None else "float32")
    for t in range(4):
        grads = [randn(p.numel(), torch.bfloat16, 100 * t + j) for j, p in enumerate(params)]
        for p, g in zip(params, grads):
            p.grad = g
        ours.step()
        numpy_opt.step([numpy_of(g, BF16) for g in grads])
    for p, a in zip(params, arrays):
        assert np.array_equal(numpy_of(p, BF16).view(np.uint16), a.view(np.uint16))
        want = torch.float32 if state_dtype is not None else torch.bfloat16
        assert ours.state[p]["exp_avg"].dtype == want
    sd = copy.deepcopy(ours.state_dict())
    assert sd["param_groups"][0].get("rounding", "nearest") == rounding
    assert ("compensation" in sd["state"][0]) == (rounding == "kahan")
    # a copy that reloads the state dict continues with the same bits
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    again = gt.AdamW(copies, lr=1e-2)
    again.load_state_dict(sd)
    grads = [randn(p.numel(), torch.bfloat16, 999 + j) for j, p in enumerate(params)]
    for group in (params, copies):
        for p, g in zip(group, grads):
            p.grad = g.clone()
    ours.step()
    again.step()
    for p, q in zip(params, copies):
        assert torch.equal(p.detach().view(torch.int16), q.detach().view(torch.int16))


def test_rounding_for_float32_params_is_refused_by_name():
    p = torch.nn.Parameter(torch.ones(3))
    opt = gt.Adam([p], rounding="stochastic")
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"params\[0\] has dtype float32"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


def test_bad_storage_options_are_refused_at_construction():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="rounding must be one of"):
        gt.Adam([p], rounding="up")
    with pytest.raises(ValueError, match="state_dtype must be"):
        gt.Adam([p], state_dtype=torch.float64)
    with pytest.raises(ValueError, match="seed must be"):
        gt.Adam([p], seed=-1)
