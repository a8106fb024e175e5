"""gdcore's thread pool under load: results (never timings) with a core kept
busy by another process, steps from several Python threads at once while the
thread count changes, idle workers going to sleep, and GDCORE_SPIN_US.

Bitwise agreement across thread counts and fork safety are in
test_consistency.py."""
import faulthandler
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import gdcore

pytestmark = pytest.mark.skipif(not gdcore.build_info()["threads"],
                                reason="built without threads")

HOG = """
import os, sys, time
cpu, parent = int(sys.argv[1]), int(sys.argv[2])
try:
    os.sched_setaffinity(0, {cpu})
except (AttributeError, OSError):
    pass
stop = time.monotonic() + 300
while os.getppid() == parent and time.monotonic() < stop:
    for _ in range(100000):
        pass
"""

SIZES = [(1 << 20) + 3, 70001, 0, 1000, 12345]


def problem(name, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    grads = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    config = {"SGD": {"lr": 0.01, "momentum": 0.9, "nesterov": True},
              "Adam": {"lr": 1e-3, "amsgrad": True}, "NAdam": {}, "RMSprop": {"centered": True},
              "Adagrad": {}, "Rprop": {}}[name]
    return getattr(gdcore, name)(params, **config), params, grads


def run(name, steps, seed=0):
    opt, params, grads = problem(name, seed)
    for k in range(steps):
        opt.step([g * (1 + k % 3) for g in grads])
    return params


@pytest.fixture
def watchdog():
    """A hang fails the run with every thread's traceback, not a stuck CI."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 CPUs and sched_getaffinity")
def test_busy_core_results_match_and_every_step_finishes(threads, watchdog):
    """Another process spins on one CPU while 2-thread steps run: workers
    wake late, share a core or never come; every step finishes and the
    result equals the 1-thread one bit for bit."""
    names = ["Adam", "SGD", "NAdam"]
    threads(1)
    expected = {name: run(name, 40) for name in names}
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(max(os.sched_getaffinity(0))),
                            str(os.getpid())])
    try:
        time.sleep(0.1)
        threads(2)
        for name in names:
            for a, b in zip(run(name, 40), expected[name]):
                np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32),
                                              err_msg=name)
    finally:
        hog.kill()
        hog.wait()


def test_python_threads_on_different_optimizers_while_thread_count_changes(threads, watchdog):
    """Four Python threads step four optimizers at once (one owns the pool,
    the others run on their own thread), while a fifth changes the thread
    count between 1 and 8; each result equals its sequential 1-thread run."""
    names = ["Adam", "RMSprop", "Adagrad", "Rprop"]
    threads(1)
    expected = [run(name, 25, seed=i) for i, name in enumerate(names)]
    threads(2)
    results, errors = [None] * len(names), []
    barrier = threading.Barrier(len(names) + 1)
    done = threading.Event()

    def work(i):
        try:
            barrier.wait()
            results[i] = run(names[i], 25, seed=i)
        except BaseException as e:          # reported below
            errors.append(e)

    def churn():
        barrier.wait()
        k = 0
        while not done.is_set():
            gdcore.set_num_threads(1 + k % 8)
            k += 1
            time.sleep(0.0005)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(names))]
    churner = threading.Thread(target=churn)
    for t in workers + [churner]:
        t.start()
    for t in workers:
        t.join()
    done.set()
    churner.join()
    assert not errors, errors
    for name, got, want in zip(names, results, expected):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=name)


def test_idle_workers_sleep(threads):
    """After a parallel step the workers spin for at most spin_us and then
    sleep: half a second of idle time costs the process (all its threads)
    almost no CPU time."""
    threads(2)
    opt, params, grads = problem("Adam")
    opt.step(grads)
    before = time.process_time()
    time.sleep(0.5)
    burnt = time.process_time() - before
    assert burnt < 0.1, f"idle process used {burnt:.3f} s of CPU in 0.5 s"


@pytest.mark.parametrize("value,expect", [("0", "0"), ("250", "250"), ("10000", "10000"),
                                          ("10001", "GDCORE_SPIN_US"), ("-1", "GDCORE_SPIN_US"),
                                          ("", "GDCORE_SPIN_US"), ("1e3", "GDCORE_SPIN_US")])
def test_spin_environment_variable(value, expect):
    """GDCORE_SPIN_US sets the spin time (build_info reports it, and steps
    are still right); anything but 0..10000 is refused at import, naming it."""
    code = ("import numpy as np, gdcore\n"
            "gdcore.set_num_threads(2)\n"
            "p = np.ones(1 << 18, np.float32); o = gdcore.Adam([p])\n"
            "for _ in range(3): o.step([np.ones_like(p)])\n"
            "assert np.all(p == p[0]) and p[0] < 1\n"
            "print(gdcore.build_info()['spin_us'])\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, GDCORE_SPIN_US=value),
                         capture_output=True, text=True, timeout=120)
    if expect == "GDCORE_SPIN_US":
        assert out.returncode != 0 and "ValueError" in out.stderr and expect in out.stderr, \
            out.stderr
    else:
        assert out.stdout.split() == [expect], out.stderr
