"""ZeroRedundancyOptimizer(optimizer_class=gdcore.torch.Adam) around a
DistributedDataParallel model on the gloo backend, 2 processes on
127.0.0.1, trains exactly as with torch.optim.Adam.  Bounded: a fixed
number of steps, a process-group timeout, and a join timeout after which the
workers are killed."""
import datetime
import json
import multiprocessing
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
STEPS = 6


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _run_workers(target, out, timeout):
    """Runs target(rank, port, out) in WORLD spawned processes, kills them
    after `timeout` seconds, and returns the JSON rank 0 wrote to `out`."""
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, port, str(out))) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, "distributed workers did not finish in time"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return json.loads(out.read_text())


def _join_group(rank, port):
    """This process as `rank` of a gloo group on 127.0.0.1, one thread each."""
    import gdcore
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    gdcore.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))


def _worker(rank, port, out_path):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gdcore.torch as gt

    _join_group(rank, port)
    try:
        runs = {}
        for label, cls in (("torch", torch.optim.Adam), ("gdcore", gt.Adam)):
            model = DDP(_model(0))
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=0.01,
                                          weight_decay=0.01)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            gen = torch.Generator().manual_seed(100 + rank)
            for _ in range(STEPS):
                x = torch.randn(32, 8, generator=gen)
                y = torch.randn(32, 2, generator=gen)
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                sched.step()
            opt.consolidate_state_dict(to=0)
            state = opt.state_dict() if rank == 0 else None
            runs[label] = ([p.detach().numpy().copy() for p in model.parameters()], state)
        if rank == 0:
            diffs = [float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))
                     for a, b in zip(runs["gdcore"][0], runs["torch"][0])]
            moved = float(max(np.max(np.abs(p - q.detach().numpy()))
                              for p, q in zip(runs["torch"][0], _model(0).parameters())))
            steps = sorted({float(s["step"]) for s in runs["gdcore"][1]["state"].values()})
            with open(out_path, "w") as f:
                json.dump({"max_scaled_diff": max(diffs), "moved": moved, "steps": steps}, f)
    finally:
        dist.destroy_process_group()


def test_zero_ddp_gloo_trains_like_torch_adam(tmp_path):
    result = _run_workers(_worker, tmp_path / "result.json", timeout=240)
    assert result["moved"] > 1e-3                    # training really happened
    assert result["steps"] == [float(STEPS)]         # torch's step representation
    assert result["max_scaled_diff"] <= 8e-6         # float32 tolerance of the suite


# ------------------------------------------------------------------ FSDP2
FSDP_STEPS = 4


def _fsdp_model(seed):
    """Odd widths: dim-0 shards of 15, 7 and 2 rows are uneven over 2 ranks."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 15), torch.nn.Tanh(), torch.nn.Linear(15, 7),
                               torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _replica_reference(cls, config):
    """torch.optim on the unsharded model, each step's grad the mean of the
    ranks' batch grads (what FSDP's reduce-scatter gives each shard)."""
    model = _fsdp_model(0)
    opt = cls(model.parameters(), **config)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(WORLD)]
    for _ in range(FSDP_STEPS):
        batches = [(torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g))
                   for g in gens]
        opt.zero_grad()
        loss = sum(torch.nn.functional.mse_loss(model(x), y) for x, y in batches) / WORLD
        loss.backward()
        opt.step()
    return ([p.detach().numpy().copy() for p in model.parameters()], True, ["DTensor"])


def _fsdp_worker(rank, port, out_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    import gdcore.torch as gt
    from gdcore.family import FAMILY

    _join_group(rank, port)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        report = {}
        for decl in FAMILY:
            config = {"lr": 0.01}
            if "weight_decay" in {h.name for h in decl.hyper}:
                config["weight_decay"] = 0.01
            runs = {}
            for label, cls in (("torch", getattr(torch.optim, decl.name)),
                               ("gdcore", getattr(gt, decl.name))):
                model = _fsdp_model(0)
                for layer in model:
                    if isinstance(layer, torch.nn.Linear):
                        fully_shard(layer, mesh=mesh)
                fully_shard(model, mesh=mesh)
                opt = cls(model.parameters(), **config)
                gen = torch.Generator().manual_seed(100 + rank)
                try:
                    for _ in range(FSDP_STEPS):
                        x = torch.randn(16, 8, generator=gen)
                        y = torch.randn(16, 2, generator=gen)
                        opt.zero_grad()
                        torch.nn.functional.mse_loss(model(x), y).backward()
                        if decl.name == "SGD":          # clipping by the global norm
                            if label == "gdcore":       # of DTensor grads, folded
                                opt.clip_grad_norm_(0.05)
                            else:
                                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
                        opt.step()
                except RuntimeError:
                    if label == "gdcore":
                        raise
                    # torch.optim itself cannot step these DTensors (Rprop's
                    # in-place index_put_): the reference is the unsharded
                    # model trained on both ranks' batches (FSDP averages them).
                    runs[label] = _replica_reference(getattr(torch.optim, decl.name), config)
                    continue
                params = list(model.parameters())
                layout = []
                for p in params:
                    for name, value in opt.state[p].items():
                        if torch.is_tensor(value) and name != "step" and value.dim() > 0:
                            layout.append(isinstance(value, DTensor)
                                          and tuple(value.placements) == tuple(p.placements)
                                          and value.shape == p.shape)
                saved = opt.state_dict()["state"]
                kinds = sorted({type(v).__name__ for st in saved.values()
                                for k, v in st.items() if k != "step" and torch.is_tensor(v)})
                runs[label] = ([p.full_tensor().detach().numpy().copy() for p in params],
                               all(layout), kinds)
            (mine, mine_layout, mine_kinds), (ref, ref_layout, ref_kinds) = \
                runs["gdcore"], runs["torch"]
            excess = max(float(np.max(np.abs(a - b) - (1e-5 * np.abs(b) + 8e-6 * max(
                1.0, float(np.max(np.abs(b))))))) for a, b in zip(mine, ref))
            moved = float(max(np.max(np.abs(a - q.detach().numpy()))
                              for a, q in zip(ref, _fsdp_model(0).parameters())))
            report[decl.name] = {"excess": excess, "moved": moved, "layout": mine_layout,
                                 "torch_layout": ref_layout, "kinds": mine_kinds,
                                 "torch_kinds": ref_kinds}
        # A grad laid out otherwise than its param: refused, naming both.
        from torch.distributed.tensor import Replicate
        model = _fsdp_model(0)
        fully_shard(model, mesh=mesh)
        first = next(model.parameters())
        opt = gt.Adam(model.parameters())
        first.grad = DTensor.from_local(torch.zeros(first.shape), mesh, [Replicate()],
                                        run_check=False)
        try:
            opt.step()
            report["mismatch"] = "stepped"
        except RuntimeError as e:
            report["mismatch"] = str(e)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(report, f)
    finally:
        dist.destroy_process_group()


def test_fsdp2_gloo_every_optimizer_trains_like_torch(tmp_path):
    """fully_shard on every layer and the root, 2 processes over gloo: each
    gdcore.torch optimizer steps the DTensor params by their local shards
    and ends where torch.optim ends, element-wise (float32 tolerance of the
    suite), with DTensor state laid out as the params."""
    pytest.importorskip("torch.distributed.fsdp")
    report = _run_workers(_fsdp_worker, tmp_path / "fsdp.json", timeout=300)
    mismatch = report.pop("mismatch")
    assert "params[0]" in mismatch and "Replicate" in mismatch and "Shard" in mismatch, mismatch
    for name, r in report.items():
        assert r["moved"] > 1e-4, name                   # training really happened
        assert r["excess"] <= 0, (name, r)               # element-wise within tolerance
        assert r["layout"] and r["torch_layout"], (name, r)
        assert r["kinds"] == r["torch_kinds"], (name, r)
