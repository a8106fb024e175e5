"""gdcore.torch under torch.amp.GradScaler: GradScaler hands `grad_scale` and
`found_inf` to step (as to torch's fused optimizers); gdcore skips the step
when an inf was found and otherwise divides the grads by the scale inside
the update.  Results are compared element-wise (the suite's float32
tolerance) with torch's fused optimizers under the same scaler, and for
every optimizer with torch's own implementation under GradScaler."""
import copy

import numpy as np
import pytest

from conftest import CONFIGS, assert_close

torch = pytest.importorskip("torch")
import gdcore.torch as gt  # noqa: E402

FUSED = ["Adam", "AdamW", "SGD", "Adagrad"]
STEPS = 8
INF_STEP = 3


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _train(model, opt, scaler, dtype, data, inf_at=INF_STEP):
    for step, (x, y) in enumerate(data):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step == inf_at:                          # an overflow: this step is skipped
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    return scaler.get_scale()


def _data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen))
            for _ in range(STEPS)]


def _compare(ours, theirs):
    for k, (a, b) in enumerate(zip(ours.parameters(), theirs.parameters())):
        assert_close(a.detach().numpy(), b.detach().double().numpy(), np.float32,
                     f"parameter {k}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", FUSED)
def test_grad_scaler_matches_torch_fused(name, dtype):
    config = dict(CONFIGS[name][-1])
    config.pop("foreach", None)
    config.pop("fused", None)
    ours_model, ref_model = _model(0), _model(0)
    ours = getattr(gt, name)(ours_model.parameters(), **config)
    theirs = getattr(torch.optim, name)(ref_model.parameters(), fused=True, **config)
    assert ours._step_supports_amp_scaling
    data = _data()
    scale_ours = _train(ours_model, ours, torch.amp.GradScaler("cpu", init_scale=2.0**12), dtype,
                        data)
    scale_ref = _train(ref_model, theirs, torch.amp.GradScaler("cpu", init_scale=2.0**12), dtype,
                       data)
    assert scale_ours == scale_ref == 2.0**11                # one backoff, from the inf
    _compare(ours_model, ref_model)
    p, q = next(ours_model.parameters()), next(ref_model.parameters())
    if "step" in theirs.state[q]:
        assert float(ours.state[p]["step"]) == float(theirs.state[q]["step"]) == STEPS - 1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_grad_scaler_every_optimizer_matches_torch(name):
    """Against torch's own (unfused) implementation, which GradScaler
    unscales before stepping: the same parameters."""
    config = dict(CONFIGS[name][0])
    ours_model, ref_model = _model(0), _model(0)
    ours = getattr(gt, name)(ours_model.parameters(), **config)
    theirs = getattr(torch.optim, name)(ref_model.parameters(), **config)
    data = _data()
    _train(ours_model, ours, torch.amp.GradScaler("cpu", init_scale=2.0**8), torch.bfloat16, data)
    _train(ref_model, theirs, torch.amp.GradScaler("cpu", init_scale=2.0**8), torch.bfloat16,
           data)
    _compare(ours_model, ref_model)


def test_found_inf_skips_everything_and_grad_scale_divides():
    p = torch.nn.Parameter(torch.ones(4))
    opt = gt.Adam([p], lr=0.1)
    p.grad = torch.full((4,), 8.0)
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    opt.step()                                       # skipped: no state, no change
    assert torch.equal(p.detach(), torch.ones(4)) and not opt.state
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    ref = torch.nn.Parameter(torch.ones(4))
    theirs = torch.optim.Adam([ref], lr=0.1)
    ref.grad = torch.full((4,), 2.0)                 # 8 / 4
    theirs.step()
    assert torch.equal(p.detach(), ref.detach())
    assert torch.equal(p.grad, torch.full((4,), 8.0))   # grads are read, never written
    for bad in (torch.tensor(0.0), torch.tensor(float("inf")), torch.tensor(-2.0)):
        opt.grad_scale = bad
        with pytest.raises(ValueError, match="grad_scale"):
            opt.step()
    opt.grad_scale = torch.ones(2)
    with pytest.raises(TypeError, match="grad_scale"):
        opt.step()
    assert float(opt.state[p]["step"]) == 1


def test_fallback_params_are_unscaled_for_torch():
    """A param torch steps (fallback=True) gets its grad unscaled first, as
    GradScaler.unscale_ would."""
    kept = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    plain = torch.nn.Parameter(torch.ones(3))
    opt = gt.SGD([kept, plain], lr=0.5, fallback=True)
    kept.grad = torch.full((3,), 4.0, dtype=torch.float16)
    plain.grad = torch.full((3,), 4.0)
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(0.0)
    opt.step()
    assert torch.equal(kept.detach(), torch.zeros(3, dtype=torch.float16))   # 1 - 0.5 * 2
    assert torch.equal(plain.detach(), torch.zeros(3))


def test_scaled_step_is_bitwise_one_call_and_threads(threads):
    """The grad multiplier runs in blocks inside each span: a 1M-element
    step equals, bit for bit, the step on pre-divided grads (a power-of-two
    scale divides exactly), on 1 and 2 threads."""
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.standard_normal((1 << 20) + 77).astype(np.float32))
    grad = torch.from_numpy(rng.standard_normal(base.numel()).astype(np.float32))
    results = []
    for n, (g, scale) in [(1, (grad * 64, 64.0)), (2, (grad * 64, 64.0)), (1, (grad, None))]:
        threads(n)
        p = torch.nn.Parameter(base.clone())
        opt = gt.NAdam([p], lr=0.01)
        for _ in range(3):
            p.grad = g.clone()
            if scale is not None:
                opt.grad_scale, opt.found_inf = torch.tensor(scale), torch.tensor(0.0)
            opt.step()
        results.append(p.detach().numpy().view(np.uint32).copy())
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
