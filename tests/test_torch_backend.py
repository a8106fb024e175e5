"""gdcore.torch: trains exactly as torch.optim, shares its state format, and
rejects what its kernels cannot take (or hands it to torch with fallback)."""
import copy
import pickle

import numpy as np
import pytest

from conftest import CONFIGS, DTYPES, assert_close

torch = pytest.importorskip("torch")
gt = pytest.importorskip("gdcore.torch")

NAMES = list(CONFIGS)
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def make_model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(),
                               torch.nn.Linear(9, 3)).to(TORCH_DTYPE[dtype])


def train_step(model, opt, x, y, scheduler=None):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()


def assert_models_close(a, b, dtype, what):
    for k, (p, q) in enumerate(zip(a.parameters(), b.parameters())):
        assert_close(q.detach().numpy(), p.detach().numpy().astype(np.float64), dtype,
                     f"param {k} {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_trains_like_torch_with_a_scheduler(name, dtype):
    config = CONFIGS[name][-1]
    ref, ours = make_model(dtype), make_model(dtype)
    ref_opt = getattr(torch.optim, name)(ref.parameters(), **config)
    our_opt = getattr(gt, name)(ours.parameters(), **config)
    assert isinstance(our_opt, getattr(torch.optim, name))
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=3, gamma=0.5)
    our_sched = torch.optim.lr_scheduler.StepLR(our_opt, step_size=3, gamma=0.5)
    gen = torch.Generator().manual_seed(1)
    for t in range(10):
        x = torch.randn(16, 6, generator=gen, dtype=TORCH_DTYPE[dtype])
        y = torch.randn(16, 3, generator=gen, dtype=TORCH_DTYPE[dtype])
        train_step(ref, ref_opt, x, y, ref_sched)
        train_step(ours, our_opt, x, y, our_sched)
        assert_models_close(ref, ours, dtype, f"after step {t}")
    assert our_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    ref_sd, our_sd = ref_opt.state_dict(), our_opt.state_dict()
    assert ref_sd["param_groups"] == our_sd["param_groups"]
    for k, entry in ref_sd["state"].items():
        assert entry.keys() == our_sd["state"][k].keys()
        for key, value in entry.items():
            mine = our_sd["state"][k][key]
            assert torch.is_tensor(mine) and mine.dtype == value.dtype, key
            assert_close(mine.numpy(), value.double().numpy(),
                         dtype if key != "step" else np.float64, key)


@pytest.mark.parametrize("direction", ["torch->gdcore", "gdcore->torch"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dicts_load_both_ways_mid_training(name, direction):
    dtype = np.float32
    config = CONFIGS[name][-1]
    first_cls, second_cls = ((getattr(torch.optim, name), getattr(gt, name))
                             if direction == "torch->gdcore" else
                             (getattr(gt, name), getattr(torch.optim, name)))
    ref = make_model(dtype)
    ref_opt = getattr(torch.optim, name)(ref.parameters(), **config)
    model = make_model(dtype)
    opt = first_cls(model.parameters(), **config)
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen))
            for _ in range(8)]
    for x, y in data[:4]:
        train_step(ref, ref_opt, x, y)
        train_step(model, opt, x, y)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    second_model = copy.deepcopy(model)
    second = second_cls(second_model.parameters(), **config)
    second.load_state_dict(saved)
    for x, y in data[4:]:
        train_step(ref, ref_opt, x, y)
        train_step(second_model, second, x, y)
    assert_models_close(ref, second_model, dtype, direction)


def test_zero_grad_add_param_group_and_hooks():
    w = torch.nn.Parameter(torch.ones(4))
    v = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = gt.Adam([w], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.add_param_group({"params": [v], "lr": 0.5})
    (w.sum() + v.sum()).backward()
    opt.step()
    assert calls == ["pre", "post"]
    step1 = 1 / (1 + 1e-8)                      # Adam's first step: m_hat / (|g| + eps)
    assert_close(w.detach().numpy(), np.full(4, 1 - 0.1 * step1), np.float32)
    assert_close(v.detach().numpy(), np.full(3, 1 - 0.5 * step1), np.float64)
    opt.zero_grad()
    assert w.grad is None and v.grad is None
    opt.step()                                  # no grads: nothing moves
    assert_close(w.detach().numpy(), np.full(4, 1 - 0.1 * step1), np.float32)
    assert opt.state[w]["step"].item() == 1


def test_closure_runs_with_grad_enabled():
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0]))
    opt = gt.SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert loss.item() == 5.0
    np.testing.assert_allclose(w.detach().numpy(), [1.0, -0.5])


def test_param_data_replaced_is_followed():
    w = torch.nn.Parameter(torch.ones(3))
    opt = gt.SGD([w], lr=1.0)
    w.grad = torch.ones(3)
    opt.step()
    w.data = torch.full((3,), 10.0)              # new storage behind the optimizer's back
    opt.step()
    np.testing.assert_array_equal(w.detach().numpy(), [9.0, 9.0, 9.0])


# ------------------------------------------------------------- bad input
def test_rejects_unsupported_params_naming_them():
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))      # stands in for CUDA
    with pytest.raises(TypeError, match=r"params\[1\] is on device meta"):
        gt.Adam([torch.nn.Parameter(torch.ones(2)), meta])
    complex_param = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="has dtype torch.complex64"):
        gt.SGD([complex_param])
    strided = torch.ones(4, 4)[:, 1].requires_grad_()
    with pytest.raises(TypeError, match="is not contiguous"):
        gt.RMSprop([strided])
    named = [("layer.weight", torch.nn.Parameter(torch.ones(2, dtype=torch.complex64)))]
    with pytest.raises(TypeError, match="'layer.weight'"):
        gt.Adam(named)
    with pytest.raises(ValueError, match="differentiable"):
        gt.Adam([torch.nn.Parameter(torch.ones(2))], differentiable=True)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        gt.Adam([torch.nn.Parameter(torch.ones(2))], lr=-1)


def test_wrapper_subclass_param_is_refused_by_name_or_falls_back():
    """A tensor subclass without memory of its own (__torch_dispatch__
    wrapper) is refused naming the param and the way out; with
    fallback=True torch steps it, as torch.optim.Adam would."""
    two_tensor = pytest.importorskip("torch.testing._internal.two_tensor")

    def param():
        return torch.nn.Parameter(two_tensor.TwoTensor(torch.zeros(3), torch.ones(3)))
    with pytest.raises(TypeError, match=r"params\[1\] is a tensor subclass \(TwoTensor\).*"
                                        "fallback=True"):
        gt.Adam([torch.nn.Parameter(torch.ones(2)), param()])
    ours, ref = param(), param()
    opt, theirs = gt.Adam([ours], fallback=True), torch.optim.Adam([ref])
    for p in (ours, ref):
        p.grad = two_tensor.TwoTensor(torch.full((3,), 0.5), torch.full((3,), -2.0))
    opt.step()
    theirs.step()
    assert torch.equal(ours.a, ref.a) and torch.equal(ours.b, ref.b)


def test_sparse_grad_is_an_error_or_falls_back():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    ids = torch.tensor([1, 4, 4])
    opt = gt.SGD(emb.parameters(), lr=0.1)
    emb(ids).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse grad"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)

    ref = copy.deepcopy(emb)
    ours = gt.SGD(emb.parameters(), lr=0.1, fallback=True)
    theirs = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref(ids).sum().backward()
    ours.step()
    theirs.step()
    assert torch.equal(emb.weight.detach(), ref.weight.detach())


@pytest.mark.parametrize("name", NAMES)
def test_fallback_steps_unsupported_params_with_torch(name):
    config = CONFIGS[name][0]
    torch.manual_seed(3)
    shapes = [(4, 3), (5,)]
    params = [torch.nn.Parameter(torch.randn(shapes[0])),
              torch.nn.Parameter(torch.randn(shapes[1], dtype=torch.complex64))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = getattr(gt, name)(params, fallback=True, **config)
    theirs = getattr(torch.optim, name)(ref, **config)
    for _ in range(3):
        for a, b in zip(params, ref):
            g = torch.randn(a.shape).to(a.dtype)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_close(params[0].detach().numpy(), ref[0].detach().double().numpy(), np.float32)
    assert torch.equal(params[1].detach(), ref[1].detach())
    assert set(ours.state[params[1]]) == set(theirs.state[ref[1]])


def test_hooks_run_as_torchs_wrapper_runs_them():
    """Global and per-optimizer pre/post hooks, in torch's order; a pre-hook
    may replace the step's arguments; a profiler still sees the step."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    opt = gt.SGD([w], lr=0.5)
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    try:
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
        opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

        def closure():
            calls.append("closure")
            return torch.tensor(7.0)
        opt.register_step_pre_hook(lambda o, a, k: ((o, closure), {}))
        with torch.profiler.profile() as prof:
            loss = opt.step()
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global pre", "pre", "closure", "post", "global post"]
    assert loss.item() == 7.0
    assert any("Optimizer.step#SGD.step" in e.name for e in prof.events())
    np.testing.assert_allclose(w.detach().numpy(), 0.5)
