"""bfloat16 and float16 params (issue 11): every optimizer, state in the
param's dtype or float32, rounding "nearest", "stochastic" and "kahan".

Oracles, each element by element:
  - the narrowing itself, bitwise: SGD from a zero param computes x =
    -(lr * g) exactly in float32, so the stored param must be the model of
    tests/half.py applied to x (NumPy/ml_dtypes rounding to nearest; the
    counter-based random bits reproduced in NumPy for "stochastic"; param and
    compensation for "kahan");
  - every optimizer x every test configuration x dtype x state dtype x
    rounding, one step at a time against the float64 reference
    (tests/reference.py) started from gdcore's own state, with the
    reference's results stored as gdcore stores them.  Stated tolerances:
    16-bit params and 16-bit state within 1 ulp of the 16-bit type (the
    float32 math may land on the other side of a rounding boundary than the
    float64 math) or, where a result cancels to near zero, within float32's
    absolute error (half.ATOL32 = 8e-6 times the buffer's largest value,
    the float32 atol of tests/conftest.py); float32 state within the
    float32 tolerances of tests/conftest.py; "kahan": param + compensation
    within 2^-15 (bfloat16) or 2^-21 (float16) of the value, relative, plus
    the same absolute term;
  - torch's fused CPU Adam, AdamW and Adagrad on the same 16-bit
    tensors (state in the param's dtype, rounding to nearest), one step at a
    time from the same state: the same 1-ulp rule.
Sizes cross the 1,024-element staging blocks and every vector tail; grads
are nonzero and mixed in magnitude (torch 2.13's fused CPU SGD once shipped
a 16-bit path that never stored the param: tests with zero grads or tiny
sizes hid it).
"""
import numpy as np
import pytest

import gdcore
from gdcore import functional as F
from conftest import CONFIGS, TOLERANCES, config_id
from gdcore.family import BY_NAME
from half import (ATOL32, BF16, F16, element_bits, far_elements, nearest, stochastic, stream_key,
                  ulps_apart)
from reference import STEPS

DTYPES = {"bfloat16": BF16, "float16": F16}
SIZES = [1, 7, 16, 33, 1023, 1025, 2100]
ROUNDINGS = ["nearest", "stochastic", "kahan"]


def problem(n, dtype, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-3, 1, n)) * scale
    return x.astype(dtype)


def sgd_target(g, lr):
    """What SGD computes from a zero param, in float32: 0 - lr * g."""
    return np.float32(0) - np.float32(lr) * g.astype(np.float32)


# ------------------------------------------------- the narrowing, bitwise

def special_values(dtype):
    values = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 65504.0, 65519.0, 65520.0,
              3.3e38, 1e-7, -6e-8, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 6.1e-5, 2.0**-14]
    with np.errstate(over="ignore"):
        return np.array(values, np.float64).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("n", SIZES + [70, 4099])
def test_nearest_is_numpys_rounding_bitwise(dtype, n):
    g = problem(n, dtype, n)
    g[: min(n, 18)] = special_values(dtype)[: min(n, 18)]
    for lr in (1.0, 0.3, 1e-3, 7.77e4):
        p = np.zeros(n, dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            F.sgd(p, g, lr=lr)
            want = nearest(sgd_target(g, lr), dtype)
        assert ulps_apart(p, want).max(initial=0) == 0, (lr, p[:20], want[:20])


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan"])
def test_bfloat16_nan_is_stored_as_the_canonical_quiet_nan(rounding):
    """A NaN result becomes 0x7FC0 whatever its sign and payload (as torch
    rounds float32 to bfloat16), in the param and in the state, on every
    path; float16 NaNs stay quiet NaNs with their sign."""
    n = 100
    nans = np.array([0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF, 0x7FC1], np.uint16)
    g = np.ones(n, BF16)
    g.view(np.uint16)[::7][: len(nans)] = nans
    is_nan = np.isnan(g.astype(np.float32))
    for multiplier in (1.0, 0.5):               # the fused path, the widening path
        p = np.zeros(n, BF16)
        opt = gdcore.Adam([p], rounding=rounding)
        opt._general_step([g], multiplier)
        state = opt.state[p]
        for out in (p, state["exp_avg"], state["exp_avg_sq"]):
            assert (out.view(np.uint16)[is_nan] == 0x7FC0).all(), out.view(np.uint16)[is_nan]
            assert not np.isnan(out[~is_nan].astype(np.float32)).any()
    h = np.full(n, np.float16(-np.nan))
    q = np.zeros(n, np.float16)
    F.sgd(q, h, lr=1.0)
    assert np.isnan(q).all()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("n", SIZES + [70, 4099])
def test_stochastic_is_the_counter_based_model_bitwise(dtype, n):
    g = problem(n, dtype, n + 1)
    g[: min(n, 18)] = special_values(dtype)[: min(n, 18)]
    for seed, stream, step, lr in ((0, 0, 1, 0.3), (12345, 7, 99, 1e-3),
                                   (2**64 - 1, 2**40, 2**62, 3.1e-6)):
        p = np.zeros(n, dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            F.sgd(p, g, lr=lr, rounding="stochastic", seed=seed, stream=stream, step=step)
            bits = element_bits(dtype, stream_key(seed, stream, step), np.arange(n))
            want = stochastic(sgd_target(g, lr), dtype, bits)
        assert ulps_apart(p, want).max(initial=0) == 0, (seed, p[:20], want[:20])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("n", SIZES + [70, 4099])
def test_kahan_keeps_the_residual_bitwise(dtype, n):
    g = problem(n, dtype, n + 2)
    lr = 0.37
    p = np.zeros(n, dtype)
    c = np.zeros(n, dtype)
    F.sgd(p, g, lr=lr, rounding="kahan", compensation=c)
    x = sgd_target(g, lr)
    want_p = nearest(x, dtype)
    want_c = nearest(x - want_p.astype(np.float32), dtype)
    assert ulps_apart(p, want_p).max(initial=0) == 0
    assert ulps_apart(c, want_c).max(initial=0) == 0
    # the next step starts from param + compensation
    p2, c2 = p.copy(), c.copy()
    F.sgd(p2, g, lr=lr, rounding="kahan", compensation=c2)
    x2 = (p.astype(np.float32) + c.astype(np.float32)) - np.float32(lr) * g.astype(np.float32)
    want_p2 = nearest(x2, dtype)
    assert ulps_apart(p2, want_p2).max(initial=0) == 0
    assert ulps_apart(c2, nearest(x2 - want_p2.astype(np.float32), dtype)).max(initial=0) == 0


def test_stochastic_keys_elements_past_2_to_the_32():
    """Elements at and beyond index 2^32 take the key of their high half
    (one staging block may straddle the boundary): checked on a view of a
    small buffer through the C API's stream key only, by the model."""
    k0, k1 = stream_key(1, 2, 3, 0), stream_key(1, 2, 3, 1)
    assert k0 != k1


# --------------------------------------------- every optimizer, per step

def _widen(a):
    return a.astype(np.float64)


def _expected(x, dtype, rounding, bits):
    if rounding == "stochastic":
        return stochastic(x, dtype, bits)
    return nearest(x, dtype)


def _check_one_optimizer(name, config, dtype, state_dtype, rounding):
    seed = 5
    params = [problem(n, dtype, 100 + n) for n in (2100, 33, 7)]
    opt = getattr(gdcore, name)(params, **config, state_dtype=state_dtype, rounding=rounding,
                                seed=seed)
    float32_state = state_dtype is not None
    rng = np.random.default_rng(7)
    for t in range(4):
        grads = [problem(p.size, dtype, int(rng.integers(1 << 30))) for p in params]
        refs = []
        for j, (p, g) in enumerate(zip(params, grads)):
            state = opt.state.get(p) or {}
            ref_state = {k: (_widen(v) if isinstance(v, np.ndarray) and v.ndim else
                             (v.copy() if isinstance(v, np.ndarray) else v))
                         for k, v in state.items() if k != "compensation"}
            if name == "SGD":
                ref_state.pop("step", None)
            if not state:
                # state gdcore creates with a nonzero value (Adagrad's sum,
                # Rprop's step_size) starts rounded to the state's dtype
                decl = BY_NAME[name]
                values = {**decl.defaults(), **config}
                for entry in decl.state:
                    init = values[entry.init] if isinstance(entry.init, str) else entry.init
                    if init != 0:
                        ref_state[entry.name] = np.full(p.size, init).astype(
                            np.float32 if float32_state else dtype).astype(np.float64)
            x = _widen(p)
            if rounding == "kahan" and "compensation" in state:
                x = x + _widen(state["compensation"])
            with np.errstate(all="ignore"):
                STEPS[name](x, ref_state, _widen(g), **config)
            step = (state.get("step", 0) + 1)
            refs.append((x, ref_state, step))
        with np.errstate(all="ignore"):
            opt.step(grads)
        for j, (p, (x, ref_state, step)) in enumerate(zip(params, refs)):
            what = f"{name}[{config_id(config)}] step {t} param {j}"
            state = opt.state[p]
            if rounding == "kahan":
                got = _widen(p) + _widen(state["compensation"])
                rtol = 2.0**-15 if dtype == BF16 else 2.0**-21
                scale = max(1.0, float(np.nanmax(np.abs(x))))
                bad = ~(np.abs(got - x) <= rtol * np.abs(x) + ATOL32 * scale) & ~(
                    np.isnan(got) & np.isnan(x))
                assert not bad.any(), (what, got[bad][:5], x[bad][:5])
            else:
                bits = element_bits(dtype, stream_key(seed, j, step), np.arange(p.size))
                want = _expected(x, dtype, rounding, bits)
                far = (ulps_apart(p, want) > 1) & far_elements(p, x, dtype)
                assert not far.any(), (what, p[far][:5], want[far][:5], x[far][:5])
            for key, value in ref_state.items():
                if key == "step" or not isinstance(value, np.ndarray) or value.ndim == 0:
                    continue
                got = state[key]
                if float32_state:
                    assert got.dtype == np.float32, (what, key, got.dtype)
                    tol = TOLERANCES[np.float32]
                    scale = max(1.0, float(np.nanmax(np.abs(value), initial=0)))
                    np.testing.assert_allclose(got, value, rtol=tol["rtol"],
                                               atol=tol["atol"] * scale, err_msg=f"{what} {key}")
                else:
                    assert got.dtype == dtype, (what, key, got.dtype)
                    far = far_elements(got, value, dtype)
                    assert not far.any(), (what, key, got[far][:5], value[far][:5])


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("state_dtype", [None, "float32"], ids=["state16", "state32"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_optimizer_against_the_float64_reference(name, dtype, state_dtype, rounding):
    for config in CONFIGS[name]:
        _check_one_optimizer(name, config, dtype, state_dtype, rounding)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("state_dtype", [None, "float32"], ids=["state16", "state32"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", list(CONFIGS))
def test_grad_multiplier_path_equals_the_fused_path_bitwise(name, dtype, state_dtype,
                                                             rounding):
    """A 16-bit step runs the fused span (grads and state converted in the
    optimizer's loop) unless the grads are multiplied on the way in (AMP's
    1 / scale, a folded clip: gdcore.torch), which widens them into float32
    blocks and runs the float32 span.  Both compute each element with the
    same float32 operations: stepping with grads g and multiplier 0.5 equals
    stepping with grads 0.5 g (exact in 16 bits for these values) and no
    multiplier, bit for bit, params and state, over 3 steps, for every
    option configuration and sizes around the staging block."""
    for config in CONFIGS[name]:
        sizes = (1500, 33, 7)
        runs = []
        for multiplier in (1.0, 0.5):
            params = [problem(n, dtype, 200 + n) for n in sizes]
            opt = getattr(gdcore, name)(params, **config, state_dtype=state_dtype,
                                        rounding=rounding, seed=9)
            rng = np.random.default_rng(3)
            for _ in range(3):
                grads = [problem(n, dtype, int(rng.integers(1 << 30))) for n in sizes]
                for g in grads:                 # halving float16 subnormals rounds
                    g[np.abs(g.astype(np.float32)) < 2.0**-12] = 2.0**-12
                with np.errstate(all="ignore"):
                    if multiplier == 1.0:
                        opt.step([(g.astype(np.float32) * 0.5).astype(dtype) for g in grads])
                    else:
                        opt._general_step(grads, multiplier)
            runs.append([(p.copy(), {k: np.array(v, copy=True) for k, v in opt.state[p].items()})
                         for p in params])
        for (p1, s1), (p2, s2) in zip(*runs):
            what = f"{name}[{config_id(config)}]"
            np.testing.assert_array_equal(p1.view(np.uint16), p2.view(np.uint16), err_msg=what)
            assert s1.keys() == s2.keys()
            for key in s1:
                a, b = s1[key], s2[key]
                if a.dtype.itemsize == 2:
                    a, b = a.view(np.uint16), b.view(np.uint16)
                np.testing.assert_array_equal(a, b, err_msg=f"{what} {key}")


# ------------------------------------------ torch's fused 16-bit kernels

# SGD is not compared with torch: torch 2.13 has no 16-bit CPU SGD that
# rounds once.  Its fused kernel leaves 16-bit params unchanged (the vector
# path never stores them: 99.7% of a 3,001-element bfloat16 param kept its
# value after a step with nonzero grads, measured here); its for-loop rounds
# lr * grad to 16 bits before adding it (2 ulps off the exact result on
# elements that cancel, e.g. -0.0539551 - 0.01 * -5.9375), and with momentum
# also rounds the buffer twice (mul_, add_).  SGD is checked against the
# float64 reference above, and its narrowing bitwise.
TORCH_16BIT = [("Adam", {}, dict(fused=True)), ("Adam", dict(weight_decay=0.1), dict(fused=True)),
               ("AdamW", {}, dict(fused=True)), ("Adagrad", {}, dict(fused=True)),
               ("Adagrad", dict(weight_decay=0.1), dict(fused=True))]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name,config,implementation", TORCH_16BIT)
def test_torch_within_one_ulp_per_step(name, config, implementation, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.bfloat16 if dtype == BF16 else torch.float16

    def to_torch(a):
        return torch.from_numpy(a.view(np.int16).copy()).view(tdtype)

    def to_numpy(t):
        return t.detach().view(torch.int16).numpy().view(dtype)

    ours = problem(3001, dtype, 11)
    opt = getattr(gdcore, name)([ours], lr=1e-2, **config)
    for t in range(5):
        g = problem(ours.size, dtype, 20 + t)
        param = torch.nn.Parameter(to_torch(ours))
        ref = getattr(torch.optim, name)([param], lr=1e-2, **implementation, **config)
        if ours in opt.state:                  # torch starts from gdcore's state
            ref.state[param] = {k: (torch.tensor(float(v)) if k == "step" else to_torch(v))
                                for k, v in opt.state[ours].items()}
        param.grad = to_torch(g)
        ref.step()
        opt.step([g])
        assert not far_elements(ours, to_numpy(param).astype(np.float64), dtype).any(), \
            (name, t)
        for key, value in ref.state[param].items():
            if key != "step":
                assert not far_elements(opt.state[ours][key], to_numpy(value).astype(np.float64),
                                        dtype).any(), (key, t)


# ------------------------------------------------ updates are not lost

@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_small_updates_are_kept_by_stochastic_and_kahan(rounding):
    """10,000 SGD updates of -1e-4 on bfloat16 params at 1.0: "nearest"
    loses every one (1e-4 is below half an ulp of 1.0, 2^-8), the other
    modes end near 1 - 10,000 * g (g = bfloat16(1e-4) = 1.00136e-4: -0.00136).
    Bound: the stochastic mean over 1,000 elements within 0.01 (its standard
    deviation is about 0.0016), each Kahan element within 0.01."""
    p = np.ones(1000, BF16)
    opt = gdcore.SGD([p], lr=1.0, rounding=rounding, seed=3)
    g = np.full(1000, 1e-4, BF16)
    for _ in range(10_000):
        opt.step([g])
    final = p.astype(np.float64)
    target = 1.0 - 10_000 * float(g[0])
    if rounding == "nearest":
        assert np.all(final == 1.0)
    elif rounding == "stochastic":
        assert abs(final.mean() - target) < 0.01, final.mean()
        assert final.std() > 0                  # elements took their own draws
    else:
        assert np.all(np.abs(final - target) < 0.01), (final.min(), final.max())


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_stochastic_rounding_is_unbiased(dtype):
    """1,000,000 elements whose exact value lies 0.3 ulp above a 16-bit
    number: the mean of the rounded values is the exact value within 6
    standard deviations of the mean of a two-point distribution
    (ulp * sqrt(0.3 * 0.7 / n))."""
    n = 1_000_000
    ulp = 2.0**-7 if dtype == BF16 else 2.0**-10
    x = np.float32(1.0 + 0.3 * ulp)
    g = np.full(n, 1.0, dtype)
    p = np.zeros(n, dtype)
    F.sgd(p, g, lr=float(x), maximize=True, rounding="stochastic", seed=42, step=1)
    values = p.astype(np.float64)
    assert set(np.unique(values)) <= {1.0, 1.0 + ulp}
    sigma = ulp * np.sqrt(0.3 * 0.7 / n)
    assert abs(values.mean() - float(x)) < 6 * sigma, (values.mean(), float(x), sigma)


def test_kahan_bfloat16_tracks_a_float32_master():
    """Adam, 300 steps, the same bfloat16-representable grads: bfloat16
    params with "kahan" (and float32 state) against float32 params and
    state.  Stated bound, measured 4x below it: every element within 1e-3
    of the float32 run (bfloat16 "nearest" with bfloat16 state misses it)."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal(4096).astype(BF16)
    master = start.astype(np.float32)
    kahan = start.copy()
    plain = start.copy()
    opts = [gdcore.Adam([master], lr=1e-3),
            gdcore.Adam([kahan], lr=1e-3, rounding="kahan", state_dtype="float32"),
            gdcore.Adam([plain], lr=1e-3)]
    for t in range(300):
        g = (rng.standard_normal(4096) * 0.1 + 0.02).astype(BF16)
        opts[0].step([g.astype(np.float32)])
        opts[1].step([g])
        opts[2].step([g])
    err = np.abs(kahan.astype(np.float64) + opts[1].state[kahan]["compensation"].astype(
        np.float64) - master)
    assert err.max() < 1e-3, err.max()
    assert np.abs(plain.astype(np.float64) - master).max() > 1e-3


# ------------------------------------- bitwise across threads and calls

@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_bitwise_across_threads_and_call_grouping(rounding, dtype, threads):
    sizes = (300_003, 1025, 17)
    start = [problem(n, dtype, n) for n in sizes]
    grads = [[problem(n, dtype, 10 * n + t) for n in sizes] for t in range(3)]
    results = []
    for nthreads, grouped in ((1, True), (2, True), (2, False)):
        threads(nthreads)
        params = [p.copy() for p in start]
        if grouped:
            opt = gdcore.Adam(params, lr=1e-2, rounding=rounding, seed=9)
            for gs in grads:
                opt.step(gs)
            comps = [opt.state[p].get("compensation") for p in params]
        else:
            m = [np.zeros(n, dtype) for n in sizes]
            v = [np.zeros(n, dtype) for n in sizes]
            comps = [np.zeros(n, dtype) if rounding == "kahan" else None for n in sizes]
            for t, gs in enumerate(grads):
                for j in range(len(sizes)):
                    F.adam(params[j], gs[j], m[j], v[j], step=t + 1, lr=1e-2,
                           rounding=rounding, seed=9, stream=j, compensation=comps[j])
        results.append((params, comps))
    for params, comps in results[1:]:
        for a, b in zip(results[0][0], params):
            assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
        for a, b in zip(results[0][1], comps):
            assert (a is None) == (b is None)
            if a is not None:
                assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


# ---------------------------------------------------------- bad input

def _adam_args(dtype=BF16, state=BF16, n=8):
    return (np.zeros(n, dtype), np.ones(n, dtype), np.zeros(n, state), np.zeros(n, state))


BAD = [
    ("states of two dtypes", lambda: F.adam(np.zeros(8, BF16), np.ones(8, BF16),
                                            np.zeros(8, np.float32), np.zeros(8, BF16), step=1),
     TypeError, "share one dtype"),
    ("float64 state for bfloat16", lambda: F.adam(*_adam_args(state=np.float64), step=1),
     TypeError, "must be the param's dtype or float32"),
    ("float32 state for float64", lambda: F.adam(*_adam_args(np.float64, np.float32), step=1),
     TypeError, "must be the param's dtype"),
    ("grad of another dtype", lambda: F.adam(np.zeros(8, BF16), np.ones(8, np.float32),
                                             np.zeros(8, BF16), np.zeros(8, BF16), step=1),
     TypeError, "gdcore does not cast"),
    ("rounding for float32", lambda: F.adam(*_adam_args(np.float32, np.float32), step=1,
                                            rounding="stochastic"),
     ValueError, "is for bfloat16 and float16"),
    ("unknown rounding", lambda: F.adam(*_adam_args(), step=1, rounding="up"),
     ValueError, "rounding must be one of"),
    ("negative seed", lambda: F.adam(*_adam_args(), step=1, rounding="stochastic", seed=-1),
     ValueError, r"seed must be in \[0, 2\*\*64\)"),
    ("seed too large", lambda: F.adam(*_adam_args(), step=1, rounding="stochastic", seed=2**64),
     ValueError, "seed must be"),
    ("float seed", lambda: F.adam(*_adam_args(), step=1, rounding="stochastic", seed=1.5),
     TypeError, "seed must be an int"),
    ("bad stream", lambda: F.adam(*_adam_args(), step=1, rounding="stochastic", stream=-3),
     ValueError, "stream must be in"),
    ("kahan without compensation", lambda: F.adam(*_adam_args(), step=1, rounding="kahan"),
     ValueError, "needs compensation"),
    ("compensation without kahan", lambda: F.adam(*_adam_args(), step=1,
                                                  compensation=np.zeros(8, BF16)),
     ValueError, "only used with rounding='kahan'"),
    ("float32 compensation", lambda: F.adam(*_adam_args(), step=1, rounding="kahan",
                                            compensation=np.zeros(8, np.float32)),
     TypeError, "compensation has dtype float32"),
    ("compensation of another shape", lambda: F.adam(*_adam_args(), step=1, rounding="kahan",
                                                     compensation=np.zeros(9, BF16)),
     ValueError, "compensation has shape"),
    ("stochastic without step", lambda: F.rprop(np.zeros(8, BF16), np.ones(8, BF16),
                                                np.zeros(8, BF16), np.full(8, 0.01, BF16),
                                                rounding="stochastic"),
     ValueError, "needs step"),
    ("class rounding for float32", lambda: gdcore.Adam([np.zeros(3, np.float32)],
                                                       rounding="kahan").step(
                                                           [np.ones(3, np.float32)]),
     ValueError, r"params\[0\] has dtype float32"),
    ("class state_dtype float64", lambda: gdcore.Adam([np.zeros(3, BF16)],
                                                      state_dtype=np.float64),
     ValueError, "state_dtype must be"),
    ("class bad seed", lambda: gdcore.Adam([np.zeros(3, BF16)], seed="x"),
     TypeError, "seed must be an int"),
]


@pytest.mark.parametrize("call,exc,fragment", [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_input_is_refused_by_name(call, exc, fragment):
    with pytest.raises(exc, match=fragment):
        call()


def test_refused_step_changes_nothing():
    p, g, m, v = _adam_args()
    p[:] = 1
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(TypeError):
        F.adam(p, g, m, v, step=1, rounding="kahan", compensation=np.zeros(8, np.float32))
    for a, b in zip((p, m, v), before):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_state_dict_round_trip_keeps_dtypes_and_compensation():
    p = problem(100, F16, 1)
    opt = gdcore.AdamW([p], state_dtype=np.float32, rounding="kahan", seed=4)
    opt.step([problem(100, F16, 2)])
    sd = opt.state_dict()
    assert sd["param_groups"][0]["state_dtype"] == "float32"
    assert sd["param_groups"][0]["rounding"] == "kahan" and sd["param_groups"][0]["seed"] == 4
    q = p.copy()
    other = gdcore.AdamW([q])
    other.load_state_dict(sd)
    state = other.state[q]
    assert state["exp_avg"].dtype == np.float32 and state["compensation"].dtype == F16
    g = problem(100, F16, 3)
    opt.step([g])
    other.step([g])
    assert np.array_equal(p.view(np.uint16), q.view(np.uint16))


def test_training_example_runs(tmp_path):
    """`python -m bench.half_train` (the training-level comparison in
    README) runs end to end, shortened; every variant reports."""
    pytest.importorskip("sklearn")
    from bench import half_train
    half_train.main(["--steps", "40", "--no-plot", "--out", str(tmp_path)])
    table = (tmp_path / "half_train.md").read_text()
    assert table.count("\n| ") == 1 + len(half_train.VARIANTS), table


def test_rounding_set_after_the_plan_is_refused_as_by_the_general_path():
    """A float32 optimizer whose plan is cached, then given rounding="kahan"
    in its group: the step is refused by name, as the general path refuses
    it, and nothing changes (the plan does not step it to nearest)."""
    p = np.ones(8, np.float32)
    opt = gdcore.Adam([p], lr=1e-2)
    for _ in range(3):
        opt.step([np.ones(8, np.float32)])
    assert opt._plan is not None
    before = p.copy()
    opt.param_groups[0]["rounding"] = "kahan"
    with pytest.raises(ValueError, match=r"params\[0\] has dtype float32"):
        opt.step([np.ones(8, np.float32)])
    assert np.array_equal(p, before)


# ------------------------------------------- the cached plan, 16-bit params

@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("state_dtype", [None, "float32"], ids=["state16", "state32"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name,config", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                         ("SGD", dict(lr=1e-2, momentum=0.9)),
                                         ("NAdam", dict(lr=1e-2))])
def test_plan_steps_16bit_params_as_the_general_path_does(name, config, dtype, state_dtype,
                                                          rounding):
    """16-bit params are stepped by the cached plan from the second step on
    (per-call cost as float32's), bit for bit as the general path steps
    them, in every rounding mode (the plan keeps each group's rounding and
    seed, and the Kahan compensations), with two groups of different seeds
    and a param skipped in one step.  SGD with stochastic rounding counts
    its steps in the general path, and has no plan."""
    sizes = (300, 5, 1, 70)
    runs = []
    for cached in (True, False):
        params = [problem(n, dtype, 40 + n) for n in sizes]
        groups = [dict(params=params[:2]), dict(params=params[2:], seed=77)]
        opt = getattr(gdcore, name)(groups, **config, state_dtype=state_dtype,
                                    rounding=rounding, seed=5)
        rng = np.random.default_rng(1)
        for t in range(4):
            grads = [problem(n, dtype, int(rng.integers(1 << 30))) for n in sizes]
            grads[1] = None if t == 2 else grads[1]         # a skipped param
            if cached:
                opt.step(grads)
                planned = not (name == "SGD" and rounding == "stochastic")
                assert (opt._plan is not None) == planned
            else:
                opt._general_step(grads)
        runs.append([(p.view(np.uint16).copy(),
                      {k: np.array(v, copy=True) for k, v in opt.state[p].items()})
                     for p in params])
    for (p1, s1), (p2, s2) in zip(*runs):
        assert np.array_equal(p1, p2)
        assert s1.keys() == s2.keys()
        for key in s1:
            a, b = np.asarray(s1[key]), np.asarray(s2[key])
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key


def test_plan_follows_a_changed_seed_and_rounding():
    """A group's seed or rounding changed after the plan was cached is what
    the next step uses (the plan gives way to the general path, which plans
    anew): equal to an optimizer built with the new values from the start."""
    results = []
    for change in (True, False):
        p = problem(500, BF16, 8)
        opt = gdcore.Adam([p], lr=1e-2, rounding="stochastic" if change else "kahan",
                          seed=1 if change else 2)
        g = [problem(500, BF16, 9 + t) for t in range(4)]
        if change:
            opt.step([g[0]])
            opt.step([g[1]])
            assert opt._plan is not None
            opt.param_groups[0]["seed"] = 2
            opt.param_groups[0]["rounding"] = "kahan"
            opt.state[p]["compensation"] = np.zeros(500, BF16)
            before = p.copy()
        else:
            # the same two first steps with stochastic rounding and seed 1
            ref = gdcore.Adam([p], lr=1e-2, rounding="stochastic", seed=1)
            ref.step([g[0]])
            ref.step([g[1]])
            opt.state[p] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                            for k, v in ref.state[p].items()}
            opt.state[p]["compensation"] = np.zeros(500, BF16)
        opt.step([g[2]])
        opt.step([g[3]])
        assert opt._plan is not None
        results.append(p.view(np.uint16).copy())
        if change:
            assert not np.array_equal(p.view(np.uint16), before.view(np.uint16))
    assert np.array_equal(results[0], results[1])


def test_plan_reads_a_seed_object_each_step_as_the_general_path():
    """A group's seed given as an object with __index__ is read at every
    step by the plan as by the general path: changing what it returns
    between steps changes the bits alike."""
    class Seed:
        def __init__(self, value):
            self.value = value

        def __index__(self):
            return self.value

    results = []
    for cached in (True, False):
        p = problem(300, BF16, 12)
        seed = Seed(3)
        opt = gdcore.Adam([p], lr=1e-2, rounding="stochastic")
        opt.param_groups[0]["seed"] = seed
        for t in range(4):
            seed.value = 3 + 1000 * t
            g = [problem(300, BF16, 20 + t)]
            opt.step(g) if cached else opt._general_step(g)
        assert (opt._plan is not None) == cached
        results.append(p.view(np.uint16).copy())
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_plan_refuses_what_the_general_path_refuses_16bit(dtype):
    """With a plan cached for 16-bit params: a grad of another dtype or
    shape, a state buffer replaced by one of another dtype, are refused by
    name (as by the general path), and nothing changes."""
    p = problem(64, dtype, 1)
    opt = gdcore.Adam([p], lr=1e-2)
    for t in range(2):
        opt.step([problem(64, dtype, 2 + t)])
    assert opt._plan is not None
    before = (p.view(np.uint16).copy(), opt.state[p]["exp_avg"].view(np.uint16).copy(),
              opt.state[p]["step"])
    bad = [([problem(64, np.float32, 5)], TypeError, r"grads\[0\] has dtype float32"),
           ([problem(63, dtype, 5)], ValueError, r"grads\[0\] has shape \(63,\)")]
    for grads, exc, fragment in bad:
        with pytest.raises(exc, match=fragment):
            opt.step(grads)
        assert np.array_equal(p.view(np.uint16), before[0])
        assert np.array_equal(opt.state[p]["exp_avg"].view(np.uint16), before[1])
        assert opt.state[p]["step"] == before[2]
    # float32 exp_avg beside a 16-bit exp_avg_sq: the general path refuses
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].astype(np.float32)
    with pytest.raises(TypeError, match="share one dtype"):
        opt.step([problem(64, dtype, 6)])
    assert np.array_equal(p.view(np.uint16), before[0])
    # both float32: a valid layout, stepped (with float32 state from here on)
    opt.state[p]["exp_avg_sq"] = opt.state[p]["exp_avg_sq"].astype(np.float32)
    opt.step([problem(64, dtype, 7)])
    assert opt.state[p]["exp_avg"].dtype == np.float32 and opt.state[p]["step"] == 3
    opt.step([problem(64, dtype, 8)])
    assert opt._plan is not None and opt.state[p]["step"] == 4
