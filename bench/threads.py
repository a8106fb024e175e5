"""Threads under a real machine's conditions: the 2-thread step while another
process keeps one core busy, and the first step after 20 ms of idle time (the
forward and backward pass of a training loop sit between two steps).

Both compare, in the same run and interleaved round by round, gdcore with 1
thread, gdcore with all threads and torch fused with 1 and all threads, on
one float32 Adam buffer of 1,048,576 elements.

    python -m bench.threads          # prints both tables
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import gdcore
from bench import impls

# A process that spins on one CPU until its parent goes away (or 10 minutes).
_HOG = """
import os, sys, time
cpu, parent = int(sys.argv[1]), int(sys.argv[2])
try:
    os.sched_setaffinity(0, {cpu})
except (AttributeError, OSError):
    pass
stop = time.monotonic() + 600
while os.getppid() == parent and time.monotonic() < stop:
    for _ in range(100000):
        pass
"""


class BusyCore:
    """Context manager: another process spins on the last CPU meanwhile."""

    def __enter__(self):
        cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        self.process = subprocess.Popen([sys.executable, "-c", _HOG, str(cpu),
                                         str(os.getpid())])
        time.sleep(0.2)                      # let it start spinning
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def _contenders(size, threads):
    """{label: (step, thread count)} for gdcore and torch fused."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(np.float32)]
    grads = [impls.aligned_copy(rng.standard_normal(size).astype(np.float32))]
    config = {"lr": 1e-3}
    out = {"gdcore x1": (impls.IMPLEMENTATIONS["gdcore"]("Adam", config, params, grads), 1),
           f"gdcore x{threads}": (
               impls.IMPLEMENTATIONS["gdcore"]("Adam", config, params, grads), threads)}
    if impls.torch is not None:
        for t in (1, threads):
            try:
                step = impls.IMPLEMENTATIONS["torch_fused"]("Adam", config, params, grads)
            except impls.Unsupported:
                break
            out[f"torch fused x{t}"] = (step, t)
    return out


def busy_core(size=1 << 20, rounds=15, steps=20, threads=2):
    """Per-step seconds of each `steps`-step round, per contender, with one
    core kept busy: {label: [seconds per step, one per round]}."""
    contenders = _contenders(size, threads)
    samples = {label: [] for label in contenders}
    with BusyCore():
        for _ in range(rounds):
            for label, (step, t) in contenders.items():
                impls.set_threads(t)
                step()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                samples[label].append((time.perf_counter() - start) / steps)
    impls.set_threads(1)
    return samples


def after_idle(size=1 << 20, rounds=15, idle=0.02, threads=2):
    """Seconds of the first step after `idle` seconds asleep, per contender:
    {label: [one per round]}."""
    contenders = _contenders(size, threads)
    samples = {label: [] for label in contenders}
    for _ in range(rounds):
        for label, (step, t) in contenders.items():
            impls.set_threads(t)
            step()
            time.sleep(idle)
            start = time.perf_counter()
            step()
            samples[label].append(time.perf_counter() - start)
    impls.set_threads(1)
    return samples


def summary(samples):
    """{label: (median, worst)} in microseconds."""
    return {label: (statistics.median(v) * 1e6, max(v) * 1e6) for label, v in samples.items()}


def table(samples, title, worst="worst round"):
    lines = [f"### {title}", "", f"| contender | median (us) | {worst} (us) |", "|---|---|---|"]
    for label, (median, top) in summary(samples).items():
        lines.append(f"| {label} | {median:,.0f} | {top:,.0f} |")
    return "\n".join(lines)


def main():
    threads = max(2, min(os.cpu_count() or 1, 2))
    print(f"gdcore {gdcore.build_info()['isa']}, spin {gdcore.build_info()['spin_us']} us")
    print(table(busy_core(threads=threads), "Adam float32 1,048,576, one core busy "
                "(per step, 20-step rounds)"))
    print()
    print(table(after_idle(threads=threads), "Adam float32 1,048,576, first step after "
                "20 ms idle", "worst"))


if __name__ == "__main__":
    main()
