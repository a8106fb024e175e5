import itertools

import numpy as np
import pytest

import gdcore

DTYPES = [np.float32, np.float64]

# Element-wise tolerances, per dtype, for NSTEPS steps of any optimizer in
# CONFIGS against the float64 reference and against torch.optim:
#     |got - want| <= rtol * |want| + atol * scale,   scale = max(1, max|want|)
# element by element (never norms).  atol is in units of the buffer's largest
# value so that it means "ulps of the data": 64 float32 ulps, ~225 float64
# ulps.  Measured worst cases (20 steps, sizes 7..4096): float32 2.9e-6
# (RMSprop centered, alpha=0.3: sqrt(v - ga^2) cancels), all others below
# 6e-7; float64 1.2e-14.
TOLERANCES = {
    np.float32: dict(rtol=1e-5, atol=8e-6),
    np.float64: dict(rtol=1e-11, atol=5e-14),
}


def assert_close(got, want, dtype, what=""):
    """Element-wise comparison under TOLERANCES[dtype] (see above)."""
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    tol = TOLERANCES[dtype]
    scale = max(1.0, float(np.max(np.abs(want[np.isfinite(want)])))) \
        if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=what)


SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1023, 2**20 + 3]
NSTEPS = 20


def _product(**axes):
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def _sgd_configs():
    out = []
    for c in _product(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                      weight_decay=[0.0, 0.1], maximize=[False, True]):
        if c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0):
            continue
        if c["momentum"] == 0 and c["dampening"] != 0:
            continue            # dampening acts on the momentum buffer only
        out.append(dict(lr=0.05, **c))
    return out


# Every option, and every combination that changes the math.
CONFIGS = {
    "SGD": _sgd_configs(),
    "Adagrad": [dict(lr=0.1, **c) for c in _product(
        lr_decay=[0.0, 0.05], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.1],
        maximize=[False, True])],
    "RMSprop": [dict(lr=0.01, **c) for c in _product(
        weight_decay=[0.0, 0.1], momentum=[0.0, 0.9], centered=[False, True],
        maximize=[False, True])] + [
        dict(lr=0.01, alpha=0.3, centered=True, momentum=0.5),   # lerp weight >= 0.5
        dict(lr=0.01, alpha=0.9, eps=1e-3)],
    "Adam": [dict(lr=0.01, **c) for c in _product(
        amsgrad=[False, True], weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True],
        maximize=[False, True])] + [
        dict(lr=0.01, betas=(0.3, 0.9)),                            # lerp weight >= 0.5
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3, amsgrad=True)],
    "AdamW": [dict(lr=0.01, **c) for c in _product(
        amsgrad=[False, True], weight_decay=[0.0, 0.1, 1e-2], maximize=[False, True])],
}


def config_id(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


@pytest.fixture
def threads():
    """Set the thread count for a test; restores the previous one after."""
    before = gdcore.get_num_threads()
    yield gdcore.set_num_threads
    gdcore.set_num_threads(before)
