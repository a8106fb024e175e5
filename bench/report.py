"""The benchmark report: gdcore against pure NumPy, torch.optim (for-loop,
foreach, fused) and DeepSpeed's CPU optimizers when importable, side by side
in one run, with a memory-bandwidth roofline measured in the same run.

    python -m bench.report            quick mode (default, about 2 minutes)
    python -m bench.report --full     every size up to 16,777,216, more rounds
    python -m bench.report --huge     also Adam at 67,108,864 elements
    python -m bench.report --smoke    a few small cases (used by the tests)

Writes report.json (every measurement), report.png (ns/element against size,
one panel per optimizer) and report.md (the tables) to --out (bench/results).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import gdcore
from bench import impls
from bench import half as bench_half
from bench import threads as bench_threads
from bench.cases import (MANY_TENSOR_CASES, OPTIMIZERS, SIZE_HUGE, SIZES_FULL, SIZES_QUICK,
                         TRAFFIC, UNFUSED)
from bench.timing import measure, paired_ratio

COLUMNS = ["gdcore", "gdcore_functional", "gdcore_torch", "numpy_naive", "numpy_inplace", "torch_forloop",
           "torch_foreach", "torch_fused", "deepspeed", "bandwidth_probe"]
SHORT = {"gdcore": "gdcore", "gdcore_functional": "gd.func", "gdcore_torch": "gd.torch",
         "numpy_naive": "np.naive",
         "numpy_inplace": "np.inpl", "torch_forloop": "t.loop", "torch_foreach": "t.foreach",
         "torch_fused": "t.fused", "deepspeed": "deepspeed", "bandwidth_probe": "probe"}


def machine_description():
    cpu = platform.processor() or platform.machine()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "gdcore": gdcore.__version__}
    if impls.torch is not None:
        versions["torch"] = impls.torch.__version__
    ds_ok, ds_why = impls.deepspeed_available()
    if ds_ok:
        import deepspeed
        versions["deepspeed"] = deepspeed.__version__
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_simd": sorted(f for f in flags if f in ("avx512f", "avx2", "fma", "sse2")),
        "gdcore_build": gdcore.build_info(),
        "versions": versions,
        "deepspeed": "available" if ds_ok else f"not available ({ds_why})",
        "platform": platform.platform(),
    }


def run_case(name, dtype, shapes, threads, implementations, rounds, batch_seconds, seed=0):
    """Time every implementation of one case, interleaved; returns a record."""
    impls.set_threads(threads)
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [impls.aligned_copy(rng.standard_normal(s).astype(dtype)) for s in shapes]
    config = OPTIMIZERS[name]
    steps, absent = {}, {}
    for impl in implementations:
        try:
            steps[impl] = impls.IMPLEMENTATIONS[impl](name, config, params, grads)
        except impls.Unsupported as why:
            absent[impl] = str(why)
    steps["bandwidth_probe"] = impls.gdcore_stream(name, params, grads)
    samples = {}
    seconds = measure(steps, rounds, batch_seconds, samples)
    elements = sum(int(np.prod(s)) for s in shapes)
    reads, writes = TRAFFIC[name]
    return {
        "optimizer": name, "dtype": np.dtype(dtype).name, "elements": elements,
        "tensors": len(shapes), "threads": threads, "seconds": seconds, "absent": absent,
        "samples": samples,
        "bytes_per_element": (reads + writes) * np.dtype(dtype).itemsize,
    }


def derived(record):
    """ns/element, GB/s and roofline fraction of gdcore; speedups."""
    s = record["seconds"]
    n = record["elements"]
    gd = s["gdcore"]
    numpy_best = min((s[k] for k in impls.NUMPY if k in s), default=None)
    torch_best = min((s[k] for k in impls.TORCH if k in s), default=None)
    return {
        "ns_per_element": {k: v / n * 1e9 for k, v in s.items()},
        "gdcore_GBps": record["bytes_per_element"] * n / gd / 1e9,
        "probe_GBps": record["bytes_per_element"] * n / s["bandwidth_probe"] / 1e9,
        "roofline_fraction": s["bandwidth_probe"] / gd,
        "speedup_vs_numpy": numpy_best / gd if numpy_best else None,
        "speedup_vs_torch": torch_best / gd if torch_best else None,
    }


def format_table(records, title):
    head = (f"| case | " + " | ".join(SHORT[c] for c in COLUMNS) +
            " | gdcore GB/s | % roofline | x NumPy | x torch |")
    lines = [f"### {title}", "",
             "ns per element (lower is better); GB/s counts the bytes each optimizer must "
             "move; % roofline = bandwidth probe time / gdcore time; x NumPy and x torch = "
             "best NumPy or torch time / gdcore time.", "", head,
             "|" + "---|" * (len(COLUMNS) + 5)]
    for r in records:
        d = r["derived"]
        case = (f"{r['optimizer']} {r['dtype']} {r['elements']:,}"
                + (f" ({r['case']})" if r.get("case") else "") + f" x{r['threads']}")
        cells = []
        for c in COLUMNS:
            v = d["ns_per_element"].get(c)
            cells.append("-" if v is None else f"{v:.3g}")
        lines.append(f"| {case} | " + " | ".join(cells) +
                     f" | {d['gdcore_GBps']:.1f} | {100 * d['roofline_fraction']:.0f}% | "
                     + (f"{d['speedup_vs_numpy']:.1f} | " if d["speedup_vs_numpy"] else "- | ")
                     + (f"{d['speedup_vs_torch']:.2f} |" if d["speedup_vs_torch"] else "- |"))
    return "\n".join(lines)


def find(records, **keys):
    for r in records:
        if all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def thread_pairing(size, threads, rounds, batch, name="Adam"):
    """float32 class API over `size` elements: per-round samples of the same
    optimizer stepped with 1 thread and with `threads` threads, interleaved
    (a slowdown of the machine that lasts a round hits both)."""
    rng = np.random.default_rng(0)
    params = [impls.aligned_copy(rng.standard_normal(size).astype(np.float32))]
    grads = [impls.aligned_copy(rng.standard_normal(size).astype(np.float32))]
    step = impls.IMPLEMENTATIONS["gdcore"](name, OPTIMIZERS[name], params, grads)

    def on(n):
        def run():
            gdcore.set_num_threads(n)
            step()
        return run
    samples = {}
    measure({"x1": on(1), f"x{threads}": on(threads)}, rounds, batch, samples)
    impls.set_threads(1)
    return samples


def targets(records, overhead, all_cores, small_threads=None, scaling=None, busy=None,
            idle=None):
    """The speed targets of the benchmarks issue, from this run's ratios."""
    out = []

    def add(label, value, limit, better="le"):
        if value is None:
            out.append((label, None, limit, "not measured"))
            return
        ok = value <= limit if better == "le" else value >= limit
        out.append((label, value, limit, "PASS" if ok else "MISS"))

    def ratio(rec, a, b):
        """gdcore / peer, paired round by round (see bench.timing)."""
        if rec is None or a not in rec["seconds"] or b not in rec["seconds"]:
            return None
        return paired_ratio(rec["samples"], a, b)

    for dtype in ("float32", "float64"):
        small = find(records, optimizer="Adam", dtype=dtype, elements=4096, threads=1,
                     tensors=1)
        add(f"Adam {dtype} 4,096, class API: gdcore / torch fused", ratio(small, "gdcore",
                                                                            "torch_fused"), 0.20)
        big = find(records, optimizer="Adam", dtype=dtype, elements=1 << 20, threads=1,
                   tensors=1)
        add(f"Adam {dtype} 1,048,576: gdcore / torch fused", ratio(big, "gdcore", "torch_fused"),
            0.55)
        add(f"Adam {dtype} 1,048,576: gdcore / DeepSpeed CPU Adam",
            ratio(big, "gdcore", "deepspeed"), 1.0)
    huge = find(records, optimizer="Adam", dtype="float32", elements=SIZE_HUGE, threads=1)
    add("Adam float32 67,108,864: gdcore / bandwidth probe",
        ratio(huge, "gdcore", "bandwidth_probe"), 1.05)
    # The six optimizers torch runs as chains of foreach ops (no fused CPU kernel).
    for name in UNFUSED:
        for dtype in ("float32", "float64"):
            for size, limit in ((65536, 0.25), (1 << 20, 0.5)):
                rec = find(records, optimizer=name, dtype=dtype, elements=size, threads=1,
                           tensors=1)
                if rec is not None:
                    add(f"{name} {dtype} {size:,}: gdcore / torch foreach",
                        ratio(rec, "gdcore", "torch_foreach"), limit)
            rec = find(records, optimizer=name, dtype=dtype, elements=1 << 24, threads=1,
                       tensors=1)
            if rec is not None:
                add(f"{name} {dtype} 16,777,216: gdcore / bandwidth probe",
                    ratio(rec, "gdcore", "bandwidth_probe"), 1.10)
    for name in OPTIMIZERS:
        for dtype in ("float32", "float64"):
            rec = find(records, optimizer=name, dtype=dtype, elements=1 << 20, threads=1,
                       tensors=1)
            if rec is None or name in UNFUSED:
                continue
            best = min((k for k in impls.TORCH if k in rec["seconds"]),
                       key=lambda k: rec["seconds"][k], default=None)
            add(f"{name} {dtype} 1,048,576: gdcore / best torch ({best})",
                ratio(rec, "gdcore", best) if best else None, 0.6)
            if name == "RMSprop":
                add(f"RMSprop {dtype} 1,048,576: gdcore / torch foreach",
                    ratio(rec, "gdcore", "torch_foreach"), 0.25)
    if all_cores > 1:
        for name, samples in (scaling or {}).items():
            add(f"{name} float32 1,048,576, class API: {all_cores}-thread speedup (paired)",
                1 / paired_ratio(samples, f"x{all_cores}", "x1"), 1.8, "ge")
        for size, samples in (small_threads or {}).items():
            add(f"Adam float32 {size:,}, class API: {all_cores}-thread time / 1-thread time "
                "(paired)", paired_ratio(samples, f"x{all_cores}", "x1"), 1.05)
    if busy:
        one = statistics.median(busy["gdcore x1"])
        many = busy[f"gdcore x{all_cores}"]
        add(f"Adam float32 1,048,576, one core busy: {all_cores}-thread median / 1-thread "
            "median", statistics.median(many) / one, 1.0)
        add(f"Adam float32 1,048,576, one core busy: worst 20-step {all_cores}-thread round / "
            "1-thread median", max(many) / one, 1.3)
    if idle:
        add(f"Adam float32 1,048,576, first step after 20 ms idle: {all_cores}-thread / "
            "1-thread (medians)", statistics.median(idle[f"gdcore x{all_cores}"])
            / statistics.median(idle["gdcore x1"]), 1.3)
    rec = find(records, case="1000x1000", threads=1)
    add("Adam float32 1000 x 1,000 tensors: gdcore / torch fused",
        ratio(rec, "gdcore", "torch_fused"), 0.15)
    add("Adam float32 1000 x 1,000 tensors: gdcore / DeepSpeed", ratio(rec, "gdcore",
                                                                       "deepspeed"), 0.3)
    add("Adam float32 1000 x 1,000 tensors, gdcore.torch: / torch fused",
        ratio(rec, "gdcore_torch", "torch_fused"), 0.2)
    add("Adam float32 1000 x 1,000 tensors, gdcore.torch: / gdcore class API",
        ratio(rec, "gdcore_torch", "gdcore"), 1.3)
    small = find(records, optimizer="Adam", dtype="float32", elements=4096, threads=1, tensors=1)
    add("Adam float32 4,096, gdcore.torch: / torch fused",
        ratio(small, "gdcore_torch", "torch_fused"), 0.3)
    if overhead:
        add("Adam per-call overhead, class API, 1 element (us)",
            overhead["seconds"]["gdcore"] * 1e6, 1.0)
    return out


def torch_reads():
    """How gdcore.torch read grads and params in this run (gdcore/torch.py)."""
    gt = sys.modules.get("gdcore.torch")
    if gt is None or not gt._C_READS:
        return "NumPy views (no C reads)"
    from gdcore import _torch_build
    if gt._CPP_READS:
        return "torch's C++ API (gdcore/_torch_reads.cpp)"
    return f"torch's DLPack exchange table (C++ reads: {_torch_build.STATUS[:200]})"


def clip_and_step(rounds, batch, shapes=((1 << 20,),) * 4):
    """Clip by global norm, then an Adam step, float32, 1 thread: torch
    (clip_grad_norm_ + fused step), gdcore.torch.clip_grad_norm_ (one-pass
    norm, then torch scales the grads) + step, and the clip folded into the
    step (opt.clip_grad_norm_: the grads are read twice, not three times).
    {label: median seconds}."""
    if impls.torch is None:
        return None
    import torch
    import gdcore.torch as gt
    rng = np.random.default_rng(0)

    def setup(cls, **kw):
        params = [torch.from_numpy(impls.aligned_copy(rng.standard_normal(s).astype(np.float32)))
                  .requires_grad_() for s in shapes]
        grads = [torch.from_numpy(impls.aligned_copy(rng.standard_normal(s).astype(np.float32)))
                 for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        return params, cls(params, lr=1e-3, **kw)

    t_params, t_opt = setup(torch.optim.Adam, fused=True)
    g_params, g_opt = setup(gt.Adam)
    f_params, f_opt = setup(gt.Adam)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(t_params, 1.0)
        t_opt.step()

    def gdcore_function():
        gt.clip_grad_norm_(g_params, 1.0)
        g_opt.step()

    def gdcore_folded():
        f_opt.clip_grad_norm_(1.0)
        f_opt.step()
    impls.set_threads(1)
    steps = {"torch: clip_grad_norm_ + fused step": torch_step,
             "gdcore.torch.clip_grad_norm_ + step": gdcore_function,
             "opt.clip_grad_norm_ (folded) + step": gdcore_folded}
    for step in steps.values():
        step()
    samples = {}
    medians = measure(steps, rounds, batch, samples)
    return {"medians": medians, "samples": samples,
            "elements": int(sum(np.prod(s) for s in shapes))}


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(OPTIMIZERS)
    columns = min(len(names), 6)
    rows = (len(names) + columns - 1) // columns
    fig, grid = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), sharey=True,
                             squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes, names):
        rows = sorted((r for r in records if r["optimizer"] == name and r["dtype"] == "float32"
                       and r["threads"] == 1 and r["tensors"] == 1),
                      key=lambda r: r["elements"])
        for impl in COLUMNS:
            points = [(r["elements"], r["derived"]["ns_per_element"][impl]) for r in rows
                      if impl in r["seconds"]]
            if points:
                x, y = zip(*points)
                style = "k--" if impl == "bandwidth_probe" else ("o-" if "gdcore" in impl
                                                                 else ".-")
                ax.plot(x, y, style, label=SHORT[impl], linewidth=2 if impl == "gdcore" else 1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name}, float32, 1 thread", fontsize=9)
        ax.set_xlabel("elements")
        ax.grid(True, which="both", alpha=0.3)
    for row in grid:
        row[0].set_ylabel("ns per element")
    handles, labels = axes[names.index("Adam") if "Adam" in names else 0] \
        .get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
        fig.subplots_adjust(bottom=0.25)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="sizes up to 16,777,216, more rounds")
    mode.add_argument("--smoke", action="store_true", help="a few small cases, one round")
    parser.add_argument("--huge", action="store_true", help="add Adam at 67,108,864 elements")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    all_cores = os.cpu_count() or 1
    thread_counts = sorted({1, all_cores})
    if args.smoke:
        sizes, rounds, batch, names, dtypes = [4096], 1, 0.002, ["SGD", "Adam", "NAdam"], [np.float32]
        many = {"few": [(100,), (3, 5), ()]}
        thread_counts = [1]
    elif args.full:
        sizes, rounds, batch, names, dtypes = SIZES_FULL, 9, 0.02, list(OPTIMIZERS), [
            np.float32, np.float64]
        many = MANY_TENSOR_CASES
    else:
        sizes, rounds, batch, names, dtypes = SIZES_QUICK, 9, 0.012, list(OPTIMIZERS), [
            np.float32, np.float64]
        many = MANY_TENSOR_CASES

    plan = [(name, dtype, size, t) for name in names for dtype in dtypes for size in sizes
            for t in thread_counts]
    if args.huge:
        plan += [("Adam", np.float32, SIZE_HUGE, t) for t in thread_counts]
    plan_many = [(case, t) for case in many for t in thread_counts]
    paired_threads = all_cores > 1 and not args.smoke
    half_ok = bench_half.ml_dtypes is not None
    total = len(plan) + len(plan_many) + 1 + 3 * paired_threads + (not args.smoke) + half_ok
    machine = machine_description()
    print(f"gdcore benchmark ({'smoke' if args.smoke else 'full' if args.full else 'quick'}"
          f" mode): {machine['cpu']}, {machine['cores']} cores, kernels run as "
          f"{machine['gdcore_build']['isa']}; DeepSpeed {machine['deepspeed']}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    records = []
    done = 0

    def progress(label):
        print(f"[{done:3d}/{total}] {time.perf_counter() - started:6.1f}s  {label}", flush=True)

    single_impls = list(impls.IMPLEMENTATIONS)
    for name, dtype, size, t in plan:
        chosen = single_impls
        if size >= SIZE_HUGE:            # memory: only the fast contenders
            chosen = ["gdcore", "torch_fused", "deepspeed"]
        elif size >= 1 << 24:
            chosen = [i for i in single_impls if i != "numpy_naive"]
        rec = run_case(name, dtype, [(size,)], t, chosen, rounds if size < 1 << 24 else 3,
                       batch)
        rec["derived"] = derived(rec)
        records.append(rec)
        done += 1
        progress(f"{name} {np.dtype(dtype).name} {size:,} x{t}: gdcore "
                 f"{rec['derived']['ns_per_element']['gdcore']:.3f} ns/element")
    for case, t in plan_many:
        chosen = [i for i in single_impls if i != "numpy_naive"]
        rec = run_case("Adam", np.float32, many[case], t, chosen, rounds, batch)
        rec["case"] = case
        rec["derived"] = derived(rec)
        records.append(rec)
        done += 1
        progress(f"Adam float32 {case} x{t}: gdcore "
                 f"{rec['seconds']['gdcore'] * 1e3:.3f} ms/step")
    # Small buffers with threads on: the same optimizer stepped with 1 and with
    # all threads, interleaved in the same rounds (no thread wakes below the
    # parallel threshold, so this pairing is safe; see README).
    small_threads, scaling = {}, {}
    if paired_threads:
        for size in (4096, 65536):
            small_threads[size] = thread_pairing(size, all_cores, rounds, batch)
        for name in names:
            scaling[name] = thread_pairing(1 << 20, all_cores, rounds, batch, name)
        done += 1
        progress("1,048,576 elements, 1 vs %d threads (paired): " % all_cores + ", ".join(
            f"{name} {1 / paired_ratio(s, f'x{all_cores}', 'x1'):.2f}x"
            for name, s in scaling.items()))
    # Threads under a real machine's conditions (bench/threads.py).
    busy = idle = None
    if paired_threads:
        busy = bench_threads.busy_core(rounds=max(rounds, 15), threads=all_cores)
        done += 1
        progress("one core busy: " + ", ".join(f"{k} {v[0]:,.0f} us" for k, v in
                                              bench_threads.summary(busy).items()))
        idle = bench_threads.after_idle(rounds=max(rounds, 15), threads=all_cores)
        done += 1
        progress("after 20 ms idle: " + ", ".join(f"{k} {v[0]:,.0f} us" for k, v in
                                                 bench_threads.summary(idle).items()))
    clip = None if args.smoke else clip_and_step(rounds, batch)
    if clip:
        done += 1
        progress("clip + step: " + ", ".join(f"{k} {v * 1e3:.2f} ms"
                                             for k, v in clip["medians"].items()))
    # Per-call overhead: a 1-element Adam step.
    overhead = run_case("Adam", np.float32, [(1,)], 1,
                        ["gdcore", "gdcore_functional", "torch_fused", "deepspeed"],
                        max(rounds, 3), batch)
    done += 1
    progress(f"Adam 1 element: gdcore {overhead['seconds']['gdcore'] * 1e6:.2f} us/call")

    # 16-bit params (bench/half.py): bfloat16 Adam in every storage mode.
    half = []
    if half_ok:
        half = bench_half.run(sizes=(4096,) if args.smoke else (1 << 20, 1 << 24),
                              rounds=rounds, batch=batch)
        done += 1
        progress("bfloat16 Adam: " + ", ".join(
            f"{r['elements']:,} nearest {r['seconds']['gdcore nearest'] / r['elements'] * 1e9:.3f}"
            " ns/element" for r in half))

    single = [r for r in records if "case" not in r]
    multi = [r for r in records if "case" in r]
    checks = targets(records, overhead, all_cores, small_threads, scaling, busy, idle)
    checks += bench_half.targets(half)
    if clip:
        folded, torch_way = ("opt.clip_grad_norm_ (folded) + step",
                             "torch: clip_grad_norm_ + fused step")
        value = paired_ratio(clip["samples"], folded, torch_way)
        checks.append(("Clip + Adam step, 4 x 1,048,576 float32: folded gdcore.torch / torch "
                       "(no target; for reference)", value, 1.0,
                       "PASS" if value <= 1.0 else "MISS"))
    lines = [f"# gdcore benchmark report", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores; gdcore kernels: "
             f"{machine['gdcore_build']['isa']}, thread pool "
             f"{'on' if machine['gdcore_build']['threads'] else 'off'} (idle workers spin "
             f"{machine['gdcore_build']['spin_us']} us); versions: "
             + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
             + f"; DeepSpeed {machine['deepspeed']}.", "",
             f"Mode: {'smoke' if args.smoke else 'full' if args.full else 'quick'}; median "
             f"of {rounds} interleaved rounds per case; threads: "
             f"{', '.join(map(str, thread_counts))}.", "",
             f"gdcore.torch's steady-state reads: {torch_reads()}.", "",
             format_table(single, "One tensor"), "",
             format_table(multi, "Many tensors (Adam, float32)"), "",
             "### Per-call overhead (Adam, 1 element)", "",
             "| implementation | us per call |", "|---|---|"]
    for impl, sec in overhead["seconds"].items():
        lines.append(f"| {SHORT.get(impl, impl)} | {sec * 1e6:.2f} |")
    if clip:
        lines += ["", f"### Clip by global norm, then an Adam step (float32, 4 tensors, "
                  f"{clip['elements']:,} elements, 1 thread)", "",
                  "| variant | ms per clip + step |", "|---|---|"]
        for label, sec in clip["medians"].items():
            lines.append(f"| {label} | {sec * 1e3:.3f} |")
    if half:
        lines += ["", bench_half.table(half)]
    if busy:
        lines += ["", bench_threads.table(busy, "Threads with one core kept busy by another "
                                          "process (Adam, float32, 1,048,576; per step, "
                                          "20-step rounds)")]
    if idle:
        lines += ["", bench_threads.table(idle, "First step after 20 ms idle (Adam, float32, "
                                          "1,048,576)", "worst")]
    lines += ["", "### Targets (ratio = gdcore time / peer time, same run; median over rounds "
              "of the ratio within each round)", "",
              "| target | measured | limit | result |", "|---|---|---|---|"]
    for label, value, limit, verdict in checks:
        lines.append(f"| {label} | {'-' if value is None else f'{value:.3f}'} | {limit} | "
                     f"{verdict} |")
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"machine": machine, "mode": "smoke" if args.smoke else
                   "full" if args.full else "quick", "records": records,
                   "overhead": overhead, "half": half, "torch_reads": torch_reads(),
                   "targets": [dict(target=a, measured=b, limit=c, result=d)
                               for a, b, c, d in checks]}, f, indent=1)
    if not args.no_plot:
        plot(single, os.path.join(args.out, "report.png"))
    print(f"\nwrote {args.out}/report.md, report.json"
          + ("" if args.no_plot else ", report.png")
          + f" in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
