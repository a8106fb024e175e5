"""gdcore.torch.clip_grad_norm_ (torch.nn.utils.clip_grad_norm_'s signature
and results, the norm from one gdcore pass) and the optimizers'
clip_grad_norm_ method (the clip folded into the next step)."""
import copy
import math

import numpy as np
import pytest

from conftest import CONFIGS, assert_close

torch = pytest.importorskip("torch")
import gdcore.torch as gt  # noqa: E402


def _params(dtype, seed=0, sizes=((7, 5), (1000,), (3,), (0,), (33, 65))):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in sizes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype))
        p.grad = torch.randn(shape, generator=gen, dtype=dtype) * 3
        params.append(p)
    return params


TOL = {torch.float32: np.float32, torch.float64: np.float64}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, "inf", 3.0, 0.5])
@pytest.mark.parametrize("max_norm", [1.0, 1e6])
def test_function_matches_torch(dtype, norm_type, max_norm):
    ours, ref = _params(dtype), _params(dtype)
    if float(norm_type) == math.inf:            # torch refuses the inf norm of an empty grad
        with pytest.raises(RuntimeError, match="empty"):
            gt.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
        ours, ref = [p for p in ours if p.numel()], [p for p in ref if p.numel()]
    got = gt.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type=norm_type)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert_close(got.double().numpy(), want.double().numpy(), TOL[dtype], "total norm")
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert_close(a.grad.double().numpy(), b.grad.double().numpy(), TOL[dtype], f"grad {k}")


def test_function_edge_cases():
    # a single tensor, no grads, generators, non-finite grads
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    assert float(gt.clip_grad_norm_(p, 1.0)) == pytest.approx(4.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    empty = torch.nn.Parameter(torch.ones(2))
    assert float(gt.clip_grad_norm_([empty], 1.0)) == 0.0
    q = torch.nn.Parameter(torch.ones(3))
    q.grad = torch.tensor([1.0, float("nan"), 2.0])
    assert math.isnan(float(gt.clip_grad_norm_(iter([q]), 1.0, norm_type="inf")))
    q.grad = torch.tensor([1.0, float("inf"), 2.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        gt.clip_grad_norm_([q], 1.0, error_if_nonfinite=True)
    # mixed dtypes go to torch's implementation, with its result
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    a.grad, b.grad = torch.ones(2), torch.ones(2, dtype=torch.float64)
    ra, rb = copy.deepcopy(a), copy.deepcopy(b)
    ra.grad, rb.grad = a.grad.clone(), b.grad.clone()
    got = gt.clip_grad_norm_([a, b], 0.5)
    want = torch.nn.utils.clip_grad_norm_([ra, rb], 0.5)
    assert torch.equal(got, want) and torch.equal(a.grad, ra.grad)


def test_function_reads_strided_grads_through_torch():
    """A non-contiguous grad: torch's path, same answer."""
    p = torch.nn.Parameter(torch.ones(4, 4))
    p.grad = torch.arange(32.0).reshape(4, 8)[:, ::2]
    ref = torch.nn.Parameter(torch.ones(4, 4))
    ref.grad = p.grad.clone()
    assert torch.equal(gt.clip_grad_norm_([p], 1.0), torch.nn.utils.clip_grad_norm_([ref], 1.0))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_method_folds_the_clip_into_the_next_step(name):
    """opt.clip_grad_norm_(max_norm) returns torch's norm, leaves the grads
    as they are, and the next step equals torch's clip + step."""
    config = dict(CONFIGS[name][0])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2))
    ref = copy.deepcopy(model)
    ours = getattr(gt, name)(model.parameters(), **config)
    theirs = getattr(torch.optim, name)(ref.parameters(), **config)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        x, y = torch.randn(4, 6, generator=gen), torch.randn(4, 2, generator=gen) * 10
        for m, o in ((model, ours), (ref, theirs)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
        before = [p.grad.clone() for p in model.parameters()]
        got = ours.clip_grad_norm_(0.5)
        want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        assert_close(got.double().numpy(), want.double().numpy(), np.float32, "norm")
        assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
        ours.step()
        theirs.step()
        for k, (a, b) in enumerate(zip(model.parameters(), ref.parameters())):
            assert_close(a.detach().numpy(), b.detach().double().numpy(), np.float32,
                         f"step {step}, parameter {k}")
    # the clip applies to one step only
    for m in (model, ref):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
    ours.step()
    theirs.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert_close(a.detach().numpy(), b.detach().double().numpy(), np.float32, "after")


def test_method_with_grad_scaler():
    """unscale_, clip (folded) and step under GradScaler equal torch's
    unscale_, clip_grad_norm_ and step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    ours, theirs = gt.AdamW(model.parameters()), torch.optim.AdamW(ref.parameters())
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        x, y = torch.randn(8, 8, generator=gen), torch.randn(8, 3, generator=gen) * 5
        for m, o, s, clip in ((model, ours, scalers[0], lambda: ours.clip_grad_norm_(0.3)),
                              (ref, theirs, scalers[1],
                               lambda: torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.3))):
            o.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(m(x), y)
            s.scale(loss).backward()
            s.unscale_(o)
            clip()
            s.step(o)
            s.update()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert_close(a.detach().numpy(), b.detach().double().numpy(), np.float32, "params")
