"""16-bit params: bfloat16 Adam in every storage mode against torch's fused
bfloat16 Adam and the bandwidth probe for the same bytes.

    python -m bench.half            # prints the table and the targets

Modes (bytes moved per element, counted from what the step must read and
write):
  nearest      bfloat16 param, grad, exp_avg, exp_avg_sq; read 4 x 2, write 3 x 2: 14 B
  stochastic   the same bytes: 14 B
  kahan        + a bfloat16 compensation, read and written: 18 B
  state32      float32 exp_avg, exp_avg_sq: read 2 x 2 + 2 x 4, write 2 + 2 x 4: 22 B
The probe runs gdcore's bandwidth probe on 2-byte elements with the same
reads and writes (nearest, stochastic: 4 reads 3 writes; kahan: 5 reads 4
writes); state32 has no single-size probe shape, so its probe time is the
float32 (4 reads, 3 writes) probe scaled by 22/28.  Every case runs its
implementations interleaved, round by round, on one thread (bench.timing).
"""
import numpy as np

import gdcore
from bench import impls
from bench.timing import measure, paired_ratio

ml_dtypes = None
try:
    import ml_dtypes
except ImportError:                     # pragma: no cover (a test dependency)
    pass

MODES = {"nearest": 14, "stochastic": 14, "kahan": 18, "state32": 22}


def _bf16(x):
    return impls.aligned_copy(x.astype(ml_dtypes.bfloat16))


def case(n, rounds, batch, seed=0):
    """One size: {label: median seconds}, the paired samples, and bytes."""
    impls.set_threads(1)
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(n)
    grad = _bf16(rng.standard_normal(n))
    steps = {}
    for mode in MODES:
        p = _bf16(start)
        options = dict(lr=1e-3, rounding="nearest" if mode == "state32" else mode,
                       state_dtype="float32" if mode == "state32" else None)
        opt = gdcore.Adam([p], **options)
        opt.step([grad])
        steps[f"gdcore {mode}"] = (lambda o=opt: o.step([grad]))
    try:
        import torch
        param = torch.nn.Parameter(torch.from_numpy(start.astype(np.float32)).to(torch.bfloat16))
        param.grad = torch.from_numpy(grad.view(np.int16).copy()).view(torch.bfloat16)
        topt = torch.optim.Adam([param], lr=1e-3, fused=True)
        topt.step()
        steps["torch fused"] = topt.step
    except ImportError:                 # pragma: no cover
        pass
    if impls.deepspeed_available()[0]:
        try:
            steps["DeepSpeed"] = _deepspeed_bf16(start, grad)
        except Exception:               # pragma: no cover - reported as absent
            pass
    two = [impls.aligned_copy(np.zeros(n, np.uint16).view(ml_dtypes.bfloat16)) for _ in range(5)]
    steps["probe 14 B"] = lambda: gdcore._core.stream([two[0]], [two[1]], [[two[2]], [two[3]]],
                                                      nread=4, nwrite=3)
    steps["probe 18 B"] = lambda: gdcore._core.stream([two[0]], [two[1]],
                                                      [[two[2]], [two[3]], [two[4]]],
                                                      nread=5, nwrite=4)
    four = [impls.aligned_copy(np.zeros(n, np.float32)) for _ in range(4)]
    steps["probe 28 B"] = lambda: gdcore._core.stream([four[0]], [four[1]],
                                                      [[four[2]], [four[3]]], nread=4, nwrite=3)
    samples = {}
    seconds = measure(steps, rounds, batch, samples)
    return {"elements": n, "seconds": seconds, "samples": samples}


def _deepspeed_bf16(start, grad):       # pragma: no cover - needs deepspeed
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    param = torch.nn.Parameter(torch.from_numpy(start.astype(np.float32)).to(torch.bfloat16))
    param.grad = torch.from_numpy(grad.view(np.int16).copy()).view(torch.bfloat16)
    opt = DeepSpeedCPUAdam([param], lr=1e-3)
    opt.step()
    return opt.step


def probe_seconds(rec, mode):
    s = rec["seconds"]
    if mode == "kahan":
        return s["probe 18 B"]
    if mode == "state32":
        return s["probe 28 B"] * 22 / 28
    return s["probe 14 B"]


def table(records):
    lines = ["### 16-bit params: bfloat16 Adam, 1 thread", "",
             "ns per element; GB/s counts the bytes each mode must move; % probe = probe "
             "time for the same bytes / gdcore time.", "",
             "| elements | mode | B/element | gdcore ns | GB/s | % probe | torch fused ns |",
             "|---|---|---|---|---|---|---|"]
    for rec in records:
        n = rec["elements"]
        s = rec["seconds"]
        for mode, nbytes in MODES.items():
            t = s[f"gdcore {mode}"]
            lines.append(f"| {n:,} | {mode} | {nbytes} | {t / n * 1e9:.3f} | "
                         f"{nbytes * n / t / 1e9:.1f} | {100 * probe_seconds(rec, mode) / t:.0f}% | "
                         + (f"{s['torch fused'] / n * 1e9:.3f} |" if "torch fused" in s else "- |"))
    return "\n".join(lines)


def targets(records):
    """Issue 11's speed targets from this run: (label, value, limit, verdict)."""
    out = []

    def add(label, value, limit):
        if value is None:
            out.append((label, None, limit, "not measured"))
        else:
            out.append((label, value, limit, "PASS" if value <= limit else "MISS"))

    mid = next((r for r in records if r["elements"] == 1 << 20), None)
    if mid is not None:
        smp = mid["samples"]
        add("bf16 Adam, bf16 state, 1,048,576: gdcore / torch fused",
            paired_ratio(smp, "gdcore nearest", "torch fused") if "torch fused" in smp
            else None, 0.5)
        add("bf16 Adam, float32 state, 1,048,576: gdcore / DeepSpeed",
            paired_ratio(smp, "gdcore state32", "DeepSpeed") if "DeepSpeed" in smp else None,
            0.8)
        add("bf16 Adam 1,048,576: stochastic / nearest",
            paired_ratio(smp, "gdcore stochastic", "gdcore nearest"), 1.15)
        add("bf16 Adam 1,048,576: kahan / nearest (bytes: 18 / 14 = 1.29)",
            paired_ratio(smp, "gdcore kahan", "gdcore nearest"), 18 / 14)
    for rec in records:
        if rec["elements"] >= 1 << 24:
            for mode in MODES:
                t = rec["seconds"][f"gdcore {mode}"]
                add(f"bf16 Adam {rec['elements']:,} {mode}: gdcore / probe (same bytes)",
                    t / probe_seconds(rec, mode), 1.1)
    return out


def run(sizes=(1 << 20, 1 << 24), rounds=9, batch=0.012):
    return [case(n, rounds if n < 1 << 24 else 5, batch) for n in sizes]


def main():
    records = run()
    print(table(records))
    print()
    for label, value, limit, verdict in targets(records):
        shown = "-" if value is None else f"{value:.3f}"
        print(f"{verdict:12s} {label}: {shown} (target <= {limit:.2f})")


if __name__ == "__main__":
    main()
