"""Side-by-side timing: implementations of one case are timed interleaved,
round by round, so that machine noise hits them alike; each round times a
batch of calls long enough for the clock, and the median over rounds is
reported."""
import statistics
import time


def calibrate(step, target_seconds):
    """Calls per batch so that one batch takes about target_seconds, from
    the second call.  (The first call of some implementations builds plans
    or loads code: timing it gave them one-call batches, each call starting
    with cold caches, while the others had batches of dozens.)"""
    step()
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(10_000, int(target_seconds / once)))


def measure(steps, rounds, batch_seconds, samples_out=None):
    """steps: {name: callable}.  Returns {name: median seconds per call};
    samples_out, if given, receives {name: [seconds per call, one per
    round]} (round r of every implementation was taken back to back)."""
    batches = {name: calibrate(step, batch_seconds) for name, step in steps.items()}
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            k = batches[name]
            start = time.perf_counter()
            for _ in range(k):
                step()
            samples[name].append((time.perf_counter() - start) / k)
    if samples_out is not None:
        samples_out.update(samples)
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratio(samples, a, b):
    """Median over rounds of a's time / b's time in the same round: machine
    slowdowns that last a round hit both sides and cancel."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))
