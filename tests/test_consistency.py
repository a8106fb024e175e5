"""Bitwise agreements: 1 vs 2 threads, one call per buffer vs one call for
many, the class API vs the functional API; and the threading/build API."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gdcore
import gdcore.functional as F
from conftest import BY_NAME, CONFIGS, DTYPES

NAMES = list(CONFIGS)


def bits(a):
    a = np.ascontiguousarray(a)
    if a.ndim == 0:
        a = a.reshape(1)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bitwise(a, b, what=""):
    np.testing.assert_array_equal(bits(a), bits(b), err_msg=what)


def run_class(name, config, params0, grads_per_step):
    params = [p.copy() for p in params0]
    opt = getattr(gdcore, name)(params, **config)
    for grads in grads_per_step:
        opt.step(grads)
    return params, opt


def problem(sizes, dtype, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


# Sizes around and far above the parallel threshold, and a many-buffer batch
# whose buffers are each below it; odd sizes put share boundaries mid-vector.
THREAD_CASES = [[2**20 + 3], [gdcore.build_info()["parallel_threshold"] + 17],
                [1000] * 150 + [70001, 3, 0, 12345]]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("sizes", THREAD_CASES, ids=["1M+3", "threshold+17", "many"])
@pytest.mark.parametrize("name", NAMES)
def test_thread_count_does_not_change_bits(name, sizes, dtype, threads):
    """1 thread against 2, 3, 8 and 64 (more threads than cores: workers
    that never get a chunk, and workers on a core they share)."""
    config = CONFIGS[name][-1]
    params0, grads = problem(sizes, dtype)
    threads(1)
    one, opt_one = run_class(name, config, params0, grads)
    for n in (2, 3, 8, 64):
        threads(n)
        two, opt_two = run_class(name, config, params0, grads)
        for k, (a, b) in enumerate(zip(one, two)):
            assert_bitwise(a, b, f"{n} threads: params[{k}]")
            for key, value in opt_one.state[a].items():
                if isinstance(value, np.ndarray):
                    assert_bitwise(value, opt_two.state[b][key],
                                   f"{n} threads: state[{k}][{key}]")


def functional_args(name, config, params):
    """State for the functional API of optimizer `name`, from its
    declaration: (state lists by slot, None where unused; scalar lists;
    the config minus init-only hyperparameters, pairs split as declared)."""
    decl = BY_NAME[name]
    values = {**decl.defaults(), **config}
    slots = []
    for s in decl.state:
        if s.when is None or s.when(values):
            init = values[s.init] if isinstance(s.init, str) else s.init
            slots.append([np.full_like(p, init) for p in params])
        else:
            slots.append(None)
    scalars = [[np.array(values[s.init] if isinstance(s.init, str) else s.init, np.float32)
                for _ in params] for s in decl.scalars]
    kwargs = {}
    for h in decl.hyper:
        if h.name in config and not h.init_only:
            if h.split:
                kwargs.update(zip(h.c, config[h.name]))
            else:
                kwargs[h.name] = config[h.name]
    return slots, scalars, kwargs


def call_functional(name, params, grads, slots, scalars, step, kwargs, multi):
    decl = BY_NAME[name]
    function = getattr(F, decl.function + ("_multi" if multi else ""))
    pick = (lambda lst: lst) if multi else (lambda lst: lst[0])
    args = [pick(params), pick(grads)]
    named = {}
    for s, lst in zip(decl.state, slots):
        if s.when is None:
            args.append(pick(lst))
        elif lst is not None:
            named[s.plural if multi else s.name] = pick(lst)
    args += [pick(lst) for lst in scalars]
    if decl.step != "unused":
        named["steps" if multi else "step"] = step
    function(*args, **named, **kwargs)


def functional_run(name, config, p0, grads):
    """Drive the functional API by hand, with explicitly allocated state."""
    p = p0.copy()
    slots, scalars, kwargs = functional_args(name, config, [p])
    for t, g in enumerate(grads, start=1):
        call_functional(name, [p], [g], slots, scalars, t, kwargs, multi=False)
    decl = BY_NAME[name]
    state = {s.name: lst[0] for s, lst in zip(decl.state, slots) if lst is not None}
    state.update({s.name: lst[0] for s, lst in zip(decl.scalars, scalars)})
    return p, state


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_class_and_functional_agree_bitwise(name, dtype):
    for config in CONFIGS[name]:
        params0, grads = problem([37], dtype, steps=5, seed=3)
        (p_class,), opt = run_class(name, config, params0, grads)
        p_fun, state = functional_run(name, config, params0[0], [g[0] for g in grads])
        assert_bitwise(p_class, p_fun, str(config))
        for key, value in state.items():
            assert_bitwise(opt.state[p_class][key], value, f"{key} {config}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_multi_equals_one_call_per_buffer(name, dtype, threads):
    threads(2)
    config = CONFIGS[name][-1]
    sizes = [0, 1, 17, 1000, 100003, 33]
    params0, grads = problem(sizes, dtype, steps=3, seed=9)
    multi = [p.copy() for p in params0]
    multi_slots, multi_scalars, kwargs = functional_args(name, config, multi)
    single = [p.copy() for p in params0]
    single_slots, single_scalars, _ = functional_args(name, config, single)
    for t, gs in enumerate(grads, start=1):
        call_functional(name, multi, gs, multi_slots, multi_scalars, t, kwargs, multi=True)
        for k in range(len(sizes)):
            call_functional(name, [single[k]], [gs[k]],
                            [None if s is None else [s[k]] for s in single_slots],
                            [[s[k]] for s in single_scalars], t, kwargs, multi=True)
    for k in range(len(sizes)):
        assert_bitwise(multi[k], single[k], f"params[{k}]")
        for a, b in zip(multi_slots + multi_scalars, single_slots + single_scalars):
            if a is not None:
                assert_bitwise(a[k], b[k], f"state [{k}]")


def test_multi_accepts_mixed_dtypes_and_per_buffer_steps():
    a = np.ones(5, np.float32)
    b = np.ones(3, np.float64)
    ms = [np.zeros_like(a), np.zeros_like(b)]
    vs = [np.zeros_like(a), np.zeros_like(b)]
    F.adam_multi([a, b], [np.ones(5, np.float32), np.ones(3)], ms, vs, steps=[1, 7], lr=0.1)
    a2, b2 = np.ones(5, np.float32), np.ones(3)
    F.adam(a2, np.ones(5, np.float32), np.zeros_like(a2), np.zeros_like(a2), step=1, lr=0.1)
    F.adam(b2, np.ones(3), np.zeros_like(b2), np.zeros_like(b2), step=7, lr=0.1)
    assert_bitwise(a, a2)
    assert_bitwise(b, b2)


def test_num_threads_api(threads):
    threads(1)
    assert gdcore.get_num_threads() == 1
    threads(2)
    assert gdcore.get_num_threads() == (2 if gdcore.build_info()["threads"] else 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        gdcore.set_num_threads(0)
    with pytest.raises(TypeError):
        gdcore.set_num_threads(1.5)


@pytest.mark.parametrize("value,expect", [("1", "1"), ("2", "2"), ("x", "must be a whole number")])
def test_environment_variable(value, expect):
    env = dict(os.environ, GDCORE_NUM_THREADS=value)
    run = subprocess.run([sys.executable, "-c", "import gdcore; print(gdcore.get_num_threads())"],
                         env=env, capture_output=True, text=True)
    assert expect in (run.stdout + run.stderr)


def test_build_info_reports_the_dispatched_isa():
    info = gdcore.build_info()
    assert set(info) >= {"isa", "isa_compiled", "threads", "spin_us", "num_threads",
                         "parallel_threshold"}
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read()
    if "x86-64-v4" in info["isa_compiled"] and flags and "GDCORE_ISA" not in os.environ:
        if all(f in flags.split() for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
            # the bfloat16 spans narrow with vcvtneps2bf16 where the CPU has it
            bf16 = "avx512_bf16" in flags.split()
            assert info["isa"].split(" ")[0] == ("x86-64-v4-bf16" if bf16 else "x86-64-v4")
        elif "avx2" in flags.split() and "fma" in flags.split():
            assert info["isa"].startswith("x86-64-v3")


def test_gdcore_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import gdcore, numpy as np\n"
            "p = np.ones(3); gdcore.Adam([p]).step([np.ones(3)])\n"
            "try:\n    import gdcore.torch\nexcept ImportError:\n    print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_steps_in_parallel(threads):
    """A child forked after gdcore's workers started has none of them: it
    starts its own and computes the same bits as the parent, with 2 threads
    (GNU OpenMP, which gdcore no longer uses, hung here)."""
    code = (
        "import os, signal, sys, numpy as np, gdcore\n"
        "gdcore.set_num_threads(2)\n"
        "def run():\n"
        "    q = np.linspace(-1, 1, (1 << 20) + 3, dtype=np.float32); o = gdcore.Adam([q])\n"
        "    for _ in range(3): o.step([np.cos(q)])\n"
        "    return q\n"
        "parent = run()                       # the pool is running\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.alarm(60)\n"
        "    child = run()\n"
        "    threads = 2 if gdcore.build_info()['threads'] else 1\n"
        "    os.write(w, child.tobytes()); os._exit(0 if gdcore.get_num_threads() == threads else 3)\n"
        "os.close(w)\n"
        "data = b''.join(iter(lambda: os.read(r, 1 << 20), b''))\n"
        "_, status = os.waitpid(pid, 0)\n"
        "same = data == parent.tobytes() and (parent == run()).all()\n"
        "print(os.waitstatus_to_exitcode(status), same)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.split() == ["0", "True"], run.stdout + run.stderr


@pytest.mark.parametrize("env,expect", [({}, "cpus"), ({"OMP_NUM_THREADS": "1"}, "1"),
                                        ({"GDCORE_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}, "1")])
def test_default_thread_count_is_fixed_at_import(env, expect):
    """torch.set_num_threads before `import gdcore` does not change gdcore's
    default, which comes from GDCORE_NUM_THREADS, OMP_NUM_THREADS or the CPUs."""
    pytest.importorskip("torch")
    if not gdcore.build_info()["threads"]:
        pytest.skip("built without threads")
    base = {k: v for k, v in os.environ.items()
            if k not in ("GDCORE_NUM_THREADS", "OMP_NUM_THREADS")}
    code = ("import os, torch; torch.set_num_threads(1)\n"
            "import gdcore; print(gdcore.get_num_threads(), len(os.sched_getaffinity(0)))")
    run = subprocess.run([sys.executable, "-c", code], env=dict(base, **env),
                         capture_output=True, text=True)
    got, cpus = run.stdout.split()
    assert got == (cpus if expect == "cpus" else expect), run.stderr
