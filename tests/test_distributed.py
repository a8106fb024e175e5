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


def _worker(rank, port, out_path):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gdcore
    import gdcore.torch as gt

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    gdcore.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
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
    out = tmp_path / "result.json"
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(rank, port, str(out))) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, "distributed workers did not finish in time"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    result = json.loads(out.read_text())
    assert result["moved"] > 1e-3                    # training really happened
    assert result["steps"] == [float(STEPS)]         # torch's step representation
    assert result["max_scaled_diff"] <= 8e-6         # float32 tolerance of the suite
