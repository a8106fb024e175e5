"""Every optimizer, every option combination, both dtypes, every SIMD tail:
gdcore against the float64 NumPy reference (reference.py) and against
torch.optim 2.13, element by element, after NSTEPS steps with random grads."""
import numpy as np
import pytest

import gdcore
from conftest import CONFIGS, DTYPES, NSTEPS, SCALARS, SIZES, assert_close, config_id
from reference import STEPS

torch = pytest.importorskip("torch")

SHAPES = {0: (0,), 1: (), 8: (2, 4), 16: (4, 4), 33: (3, 11), 1023: (3, 11, 31)}
BIG = 2**20 + 3
FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}      # torch's fused CPU kernels
# torch's foreach ASGD derives eta and mu with float32 tensor ops where its
# for-loop (which gdcore follows) uses double: they differ by ~1e-6 relative,
# beyond the float64 tolerance, so float64 ASGD is checked against the for-loop.
FOREACH_SCALARS_IN_FLOAT32 = {"ASGD"}


def make_problem(size, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES.get(size, (size,))
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(NSTEPS)]
    return p0, grads


def run_gdcore(name, config, p0, grads):
    p = p0.copy()
    opt = getattr(gdcore, name)([p], **config)
    for g in grads:
        opt.step([g])
    return p, (opt.state[p] if p in opt.state else {})


def run_reference(name, config, p0, grads):
    p = p0.astype(np.float64)
    state = {}
    for g in grads:
        STEPS[name](p, state, g.astype(np.float64), **config)
    return p, state


def run_torch(name, config, p0, grads, **implementation):
    param = torch.from_numpy(p0.copy()).requires_grad_()
    opt = getattr(torch.optim, name)([param], **config, **implementation)
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
    state = {k: v.detach().numpy() for k, v in opt.state[param].items()
             if k != "step" and torch.is_tensor(v)} if param in opt.state else {}
    return param.detach().numpy(), state


def assert_same(got, want, dtype, what, scalars=()):
    """Param and state element-wise; scalar state (0-d, torch's scalar
    dtype) exactly."""
    got_p, got_state = got
    want_p, want_state = want
    assert got_p.dtype == dtype and got_p.shape == want_p.shape
    assert_close(got_p, want_p, dtype, f"param vs {what}")
    assert set(k for k in got_state if k != "step") == set(want_state) - {"step"}, what
    for key, value in want_state.items():
        if key == "step":
            assert got_state["step"] == value
            continue
        if key in scalars:
            assert got_state[key].dtype == np.asarray(value).dtype, key
            assert got_state[key] == value, (key, got_state[key], value, what)
            continue
        assert got_state[key].dtype == dtype
        assert_close(got_state[key], value, dtype, f"{key} vs {what}")


def cases(sizes_all, sizes_big):
    for name, configs in CONFIGS.items():
        for k, config in enumerate(configs):
            sizes = sizes_all + (sizes_big if k in (0, len(configs) - 1) else [])
            for size in sizes:
                yield pytest.param(name, config, size, id=f"{name}-{size}-{config_id(config)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name,config,size", list(cases([s for s in SIZES if s != BIG], [BIG])))
def test_matches_reference_and_torch(name, config, size, dtype):
    p0, grads = make_problem(size, dtype, seed=size)
    got = run_gdcore(name, config, p0, grads)
    assert_same(got, run_reference(name, config, p0, grads), dtype, "float64 reference",
                SCALARS[name])
    assert_same(got, run_torch(name, config, p0, grads), dtype, "torch.optim", SCALARS[name])
    if size == 1023 and not (name in FOREACH_SCALARS_IN_FLOAT32 and dtype == np.float64):
        assert_same(got, run_torch(name, config, p0, grads, foreach=True), dtype,
                    "torch.optim foreach", SCALARS[name])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name,config", [
    pytest.param(name, config, id=f"{name}-{config_id(config)}")
    for name, configs in CONFIGS.items() if name in FUSED for config in configs])
def test_matches_torch_fused(name, config, dtype):
    p0, grads = make_problem(1023, dtype, seed=5)
    got = run_gdcore(name, config, p0, grads)
    assert_same(got, run_torch(name, config, p0, grads, fused=True), dtype, "torch fused",
                SCALARS[name])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_nan_and_inf_propagate_as_in_torch(name, dtype):
    p0, grads = make_problem(64, dtype, seed=11)
    for g in grads[3:6]:
        g[::7] = np.nan
        g[1::9] = np.inf
        g[2::11] = -np.inf
    config = CONFIGS[name][-1]
    got_p, _ = run_gdcore(name, config, p0, grads)
    want_p, _ = run_torch(name, config, p0, grads)
    np.testing.assert_array_equal(np.isnan(got_p), np.isnan(want_p))
    finite = np.isfinite(want_p)
    np.testing.assert_array_equal(np.isfinite(got_p), finite)
    assert_close(got_p[finite], want_p[finite], dtype, "finite elements")
