"""pytest-benchmark view of the suite: every implementation of every
optimizer, both dtypes, a small and a large size, 1 thread.

    pytest bench --benchmark-enable --benchmark-group-by=group

CI runs it with benchmarks disabled (each step runs once), so the suite and
the report cannot rot; timings never fail a test.
"""
import numpy as np
import pytest

from bench import impls
from bench.cases import OPTIMIZERS

pytest.importorskip("pytest_benchmark")


@pytest.fixture(autouse=True)
def one_thread():
    impls.set_threads(1)
    yield


@pytest.mark.parametrize("impl", list(impls.IMPLEMENTATIONS))
@pytest.mark.parametrize("size", [4096, 1 << 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step(benchmark, name, dtype, size, impl):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(dtype)]
    grads = [rng.standard_normal(size).astype(dtype)]
    try:
        step = impls.IMPLEMENTATIONS[impl](name, OPTIMIZERS[name], params, grads)
    except impls.Unsupported as why:
        pytest.skip(str(why))
    benchmark.group = f"{name} {np.dtype(dtype).name} {size}"
    benchmark(step)


def test_roofline_probe_moves_the_bytes(benchmark):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(1 << 16).astype(np.float32)]
    grads = [rng.standard_normal(1 << 16).astype(np.float32)]
    benchmark(impls.gdcore_stream("Adam", params, grads))


def test_report_smoke(tmp_path):
    """The report runs end to end and writes its three files."""
    import json

    from bench import report
    assert report.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["records"] and data["machine"]["gdcore_build"]["isa"]
    assert (tmp_path / "report.png").stat().st_size > 0
    text = (tmp_path / "report.md").read_text()
    assert "Targets" in text and "Adam float32 4,096" in text


def test_thread_rows_run():
    """The report's busy-core and after-idle rows run end to end (tiny sizes)."""
    from bench import threads
    busy = threads.busy_core(size=1 << 17, rounds=1, steps=2)
    idle = threads.after_idle(size=1 << 17, rounds=1, idle=0.001)
    for samples in (busy, idle):
        assert {"gdcore x1", "gdcore x2"} <= set(samples)
        assert all(len(v) == 1 and v[0] > 0 for v in samples.values())
    assert "gdcore x2" in threads.table(busy, "t")


def test_train_end_to_end_smoke(tmp_path):
    """The end-to-end training benchmark runs (one short epoch) and its loss
    curves agree: gdcore.torch trains like torch.optim.Adam."""
    pytest.importorskip("sklearn")
    import json

    from bench import train
    assert train.main(["--epochs", "1", "--blocks", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "train.json").read_text())["summary"]
    assert set(summary) == {"torch for-loop", "torch foreach", "torch fused", "gdcore.torch"}
    assert summary["gdcore.torch"]["max_loss_diff"] < 1e-4
    assert summary["gdcore.torch"]["max_param_diff"] < 1e-4
    assert (tmp_path / "train.png").stat().st_size > 0
