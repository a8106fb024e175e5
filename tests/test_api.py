"""The class API: tutorial examples, param groups, schedules, skipped params,
state and state_dict, checked against torch.optim where torch has the same
behaviour."""
import pickle

import numpy as np
import pytest

import gdcore
from conftest import CONFIGS, DTYPES, assert_close

torch = pytest.importorskip("torch")


def test_tutorial_gradient_descent_on_a_parabola():
    theta = np.array(0.0)
    opt = gdcore.SGD([theta], lr=0.1)
    for _ in range(100):
        opt.step([2 * (theta - 3)])
    assert theta.shape == () and theta.dtype == np.float64
    # theta_t = 3 - 3 * 0.8^t exactly in real arithmetic
    assert abs(float(theta) - (3 - 3 * 0.8**100)) < 1e-12


def test_tutorial_adam_float32():
    theta = np.array(0.0, dtype=np.float32)
    opt = gdcore.Adam([theta], lr=0.01)
    for _ in range(2000):
        opt.step([2 * (theta - 3.0)])
    assert theta.dtype == np.float32 and theta.shape == ()
    assert abs(float(theta) - 3.0) < 1e-2
    assert opt.state[theta]["step"] == 2000


def torch_twin(name, groups_np, config):
    tensors = [[torch.from_numpy(p.copy()).requires_grad_() for p in g["params"]]
               for g in groups_np]
    groups = [dict({k: v for k, v in g.items() if k != "params"}, params=ts)
              for g, ts in zip(groups_np, tensors)]
    return getattr(torch.optim, name)(groups, **config), [t for ts in tensors for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_groups_schedule_and_skipped_params_match_torch(name, dtype):
    rng = np.random.default_rng(1)
    config = CONFIGS[name][-1]
    shapes = [(3, 4), (), (17,), (2, 2, 2)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
    opt = getattr(gdcore, name)(groups, **config)
    topt, tparams = torch_twin(name, groups, config)
    for t in range(12):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        if t % 3 == 1:
            grads[1] = None                      # param 1 skips this step
        for group, tgroup in zip(opt.param_groups, topt.param_groups):
            group["lr"] = tgroup["lr"] = group["lr"] * 0.9       # a schedule
        opt.step(grads)
        for tp, g in zip(tparams, grads):
            tp.grad = None if g is None else torch.from_numpy(g.copy())
        topt.step()
        for k, (p, tp) in enumerate(zip(params, tparams)):
            assert_close(p, tp.detach().numpy(), dtype, f"params[{k}] step {t}")
    if "step" in opt.state[params[0]]:
        assert opt.state[params[1]]["step"] == 12 - 4
        assert opt.state[params[0]]["step"] == 12


def test_mixed_dtypes_in_one_group():
    a = np.ones(4, np.float32)
    b = np.ones((2, 3), np.float64)
    opt = gdcore.Adam([a, b], lr=0.1)
    opt.step([np.full(4, 0.5, np.float32), np.full((2, 3), 0.5)])
    assert a.dtype == np.float32 and b.dtype == np.float64
    assert opt.state[a]["exp_avg"].dtype == np.float32
    want = 1 - 0.1 * 0.5 / (0.5 + 1e-8)         # step 1: m_hat = g, v_hat = g^2
    assert_close(a, np.full(4, want), np.float32)
    assert_close(b, np.full((2, 3), want), np.float64)


def test_numpy_scalar_grad_for_0d_param():
    theta = np.array(1.0, dtype=np.float32)
    opt = gdcore.SGD([theta], lr=0.5)
    opt.step([np.float32(2.0)])
    assert float(theta) == 0.0


def test_non_contiguous_grad_is_read_correctly():
    p = np.zeros(6)
    g = np.arange(12.0)[::2]
    gdcore.SGD([p], lr=1.0).step([g])
    np.testing.assert_array_equal(p, -np.arange(12.0)[::2])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_round_trip_is_exact(name):
    rng = np.random.default_rng(2)
    config = CONFIGS[name][-1]
    shapes = [(5,), (2, 3), ()]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(8)]
    opt = getattr(gdcore, name)([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}],
                                **config)
    for g in grads[:4]:
        opt.step(g)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    for entry in saved["state"].values():
        for value in entry.values():
            assert isinstance(value, (np.ndarray, int))
    for group in saved["param_groups"]:
        for value in group.values():
            assert isinstance(value, (int, float, bool, tuple, list))

    copies = [p.copy() for p in params]
    clone = getattr(gdcore, name)([{"params": copies[:1]}, {"params": copies[1:]}], **config)
    clone.load_state_dict(saved)
    assert clone.param_groups[1]["lr"] == 0.02
    for g in grads[4:]:
        opt.step(g)
        clone.step([x.copy() for x in g])
    for p, c in zip(params, copies):
        np.testing.assert_array_equal(p, c)
    for p, c in zip(params, copies):
        for key, value in opt.state[p].items():
            np.testing.assert_array_equal(clone.state[c][key], value)
    again = clone.state_dict()
    assert again["param_groups"] == opt.state_dict()["param_groups"]


def test_state_dict_is_a_snapshot():
    p = np.ones(3)
    opt = gdcore.Adam([p])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    opt.step([np.ones(3)])
    assert sd["state"][0]["step"] == 1
    assert not np.array_equal(sd["state"][0]["exp_avg"], opt.state[p]["exp_avg"])


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    p = np.ones(3)
    opt = gdcore.Adam([p], lr=0.1)
    opt.step([np.ones(3)])
    before = opt.state_dict()
    other = gdcore.Adam([np.ones(4)], lr=0.5)
    other.step([np.ones(4)])
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())
    two_groups = gdcore.Adam([{"params": [np.ones(3)]}, {"params": [np.ones(3)]}])
    with pytest.raises(ValueError, match="number of parameter groups"):
        opt.load_state_dict(two_groups.state_dict())
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    np.testing.assert_array_equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_state_is_keyed_by_param_and_uses_torch_names():
    p = np.ones(4, np.float32)
    opt = gdcore.Adam([p], amsgrad=True)
    assert p not in opt.state
    opt.step([np.ones(4, np.float32)])
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert opt.state[p]["exp_avg"].ctypes.data % 64 == 0
    assert list(opt.state) == [p]


def test_defaults_match_torch():
    for name in CONFIGS:
        ours = getattr(gdcore, name)([np.ones(2)]).defaults
        theirs = getattr(torch.optim, name)([torch.ones(2, requires_grad=True)]).defaults
        for key, value in ours.items():
            assert theirs[key] == value, (name, key)


def test_add_param_group():
    a, b = np.ones(2), np.ones(3)
    opt = gdcore.SGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 1.0})
    opt.step([np.ones(2), np.ones(3)])
    np.testing.assert_allclose(a, 0.9)
    np.testing.assert_allclose(b, 0.0)


class _NoPlan:
    """Wraps an optimizer so that every step takes the general path."""

    def __init__(self, opt):
        self.opt = opt

    def step(self, grads):
        self.opt._plan = None
        self.opt.step(grads)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_plan_equals_general_path_under_changes(name):
    """The steady-state fast path (a cached plan) against the general path,
    bit for bit, while the user changes things between steps."""
    rng = np.random.default_rng(4)
    config = dict(CONFIGS[name][-1])
    shapes = [(4, 5), (7,), ()]
    dtypes = [np.float32, np.float64, np.float32]
    runs = []
    for wrap in (lambda o: o, _NoPlan):
        params = [np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(d)
                  for s, d in zip(shapes, dtypes)]
        opt = getattr(gdcore, name)([{"params": params[:2]}, {"params": params[2:]}], **config)
        runs.append((wrap(opt), opt, params))
    grads_seq = [[rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
                 for _ in range(12)]
    for t, grads in enumerate(grads_seq):
        for wrapped, opt, params in runs:
            if t == 4:
                opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 0.5
            if t == 6:
                key = [k for k in opt.state[params[0]] if k != "step"][0]
                opt.state[params[0]][key] = opt.state[params[0]][key] * 0.5
            if t == 8:
                opt.load_state_dict(opt.state_dict())
            g = list(grads)
            if t == 9:
                g[1] = None
            wrapped.step(g)
        (_, a, pa), (_, b, pb) = runs
        for k, (x, y) in enumerate(zip(pa, pb)):
            np.testing.assert_array_equal(x, y, err_msg=f"params[{k}] after step {t}")
            for key, value in a.state[x].items():
                np.testing.assert_array_equal(value, b.state[y][key], err_msg=key)
    assert runs[0][1]._plan is not None        # the fast path was in use at the end


def test_plan_sees_a_param_list_changed_in_place():
    a, b = np.ones(3), np.ones(3)
    opt = gdcore.SGD([a], lr=0.5)
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    opt.param_groups[0]["params"][0] = b          # swapped behind the optimizer's back
    opt.step([np.ones(3)])
    np.testing.assert_array_equal(a, 0.0)
    np.testing.assert_array_equal(b, 0.5)


def test_hyperparameters_changed_in_place_take_effect():
    """A list-valued betas edited in place is seen by the next step."""
    def run(edit_in_place):
        p = np.linspace(-1, 1, 5)
        opt = gdcore.Adam([p], lr=0.1)
        opt.param_groups[0]["betas"] = [0.9, 0.999]          # a mutable list
        for t in range(4):
            if t == 2:
                if edit_in_place:
                    opt.param_groups[0]["betas"][0] = 0.5
                else:
                    opt.param_groups[0]["betas"] = [0.5, 0.999]
            opt.step([np.full(5, 1.0 + t)])
        return p
    np.testing.assert_array_equal(run(True), run(False))


def test_plan_keeps_serving_steps_that_skip_params():
    """Frozen params (grad None) do not push every step onto the general path,
    and a skipped param's state and step counter stay as they were."""
    a, b = np.ones(4), np.ones(3)
    opt = gdcore.Adam([a, b], lr=0.1)
    opt.step([np.ones(4), np.ones(3)])
    plan = opt._plan
    assert plan is not None
    b_before = b.copy()
    opt.step([np.ones(4), None])
    assert opt._plan is plan                       # served by the same plan
    np.testing.assert_array_equal(b, b_before)
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1
    opt.step([None, np.ones(3)])
    assert opt._plan is plan
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_signatures_are_torchs_and_the_stubs_list_them(name):
    """inspect.signature shows the real parameters (torch's names, defaults
    and keyword-only ones, minus its implementation selectors), and the
    generated type stubs declare the class and both functional forms."""
    import ast
    import inspect
    import os
    from gdcore.family import BY_NAME
    ours = inspect.signature(getattr(gdcore, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    selectors = {"foreach", "fused", "capturable", "differentiable"}
    want = {k: v.default for k, v in theirs.items() if k not in selectors}
    # gdcore's additions for 16-bit params, keyword-only, after torch's
    storage = {"state_dtype": None, "rounding": "nearest", "seed": 0}
    assert list(ours)[-len(storage):] == list(storage)
    for k, default in storage.items():
        assert ours[k].kind == inspect.Parameter.KEYWORD_ONLY and ours[k].default == default
    assert {k: v.default for k, v in ours.items() if k not in storage} == want
    for k, v in ours.items():
        if v.kind == inspect.Parameter.KEYWORD_ONLY and k not in storage:
            assert theirs[k].kind == inspect.Parameter.KEYWORD_ONLY or k == "maximize", k
    function = BY_NAME[name].function
    assert "lr" in inspect.signature(getattr(gdcore.functional, function)).parameters or \
        name == "Rprop"
    here = os.path.dirname(gdcore.__file__)
    for stub, names in (("functional.pyi", [function, function + "_multi"]),
                        ("optim.pyi", [name])):
        path = os.path.join(here, stub)
        if not os.path.exists(path):
            pytest.skip("type stubs are written by the build (setup.py)")
        tree = ast.parse(open(path).read())
        declared = {node.name for node in tree.body
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert set(names) <= declared, (stub, names)
