"""gdcore.torch's reads through torch's C++ API (gdcore/_torch_reads.cpp,
compiled against the installed torch on first use by gdcore/_torch_build.py).

Where a C++ compiler exists they must be built and in use; the switch and
every failure fall back to the exchange-table reads; concurrent first uses
compile once; grads the step reads without a Python object (fresh from
backward) step as torch, and every grad the step holds is released.  The
checks themselves run in test_torch_fastpath.py with both readers.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
gt = pytest.importorskip("gdcore.torch")

from gdcore import _core, _torch_build  # noqa: E402
from test_torch_parity import assert_params_match, assert_states_match  # noqa: E402


def _compiler_present():
    try:
        return shutil.which(_torch_build._compiler()[0]) is not None
    except FileNotFoundError:
        return False


@pytest.fixture
def cpp_reads():
    if not gt._cpp_reads():
        pytest.skip(f"the C++ reads are not available: {_torch_build.STATUS}")
    previous = _core.use_torch_reads(True)
    yield
    _core.use_torch_reads(previous)


def test_the_cpp_reads_are_built_and_used_where_a_compiler_is():
    if not _compiler_present():
        pytest.skip("no C++ compiler")
    assert gt._cpp_reads(), _torch_build.STATUS
    assert _torch_build.table() is not None, _torch_build.STATUS     # (STATUS of this call)
    assert _torch_build.STATUS.startswith("loaded (cached) "), _torch_build.STATUS


def test_the_switch_turns_them_off(monkeypatch):
    monkeypatch.setenv("GDCORE_TORCH_READS", "0")
    assert _torch_build.table() is None
    assert _torch_build.STATUS.startswith("off"), _torch_build.STATUS


def test_a_failed_compile_is_reported_remembered_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("GDCORE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")          # a compiler that always fails
    assert _torch_build.table() is None
    assert _torch_build.STATUS.startswith("compile failed: "), _torch_build.STATUS
    failed = [f for f in os.listdir(tmp_path) if f.endswith(".failed")]
    assert len(failed) == 1 and [f for f in os.listdir(tmp_path)
                                 if not f.endswith((".lock", ".failed"))] == []
    assert _torch_build.table() is None         # not tried again with that compiler
    assert _torch_build.STATUS.startswith("compile failed before"), _torch_build.STATUS
    monkeypatch.setenv("CXX", "true")           # "succeeds" without making a module
    assert _torch_build.table() is None
    assert "does not load" in _torch_build.STATUS, _torch_build.STATUS
    assert [f for f in os.listdir(tmp_path) if not f.endswith((".lock", ".failed"))] == []
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert _torch_build.table() is None
    assert _torch_build.STATUS.startswith("unavailable"), _torch_build.STATUS


def test_capsules_of_another_name_or_abi_are_refused(fast_path_calls):
    """torch_reads_init takes only the table of this ABI; refused ones change
    nothing (the steps go on as before)."""
    import ctypes
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    table = (ctypes.c_uint32 * 16)(999, 48)             # abi 999
    right_name = ctypes.c_char_p(b"gdcore._torch_reads.TABLE")
    other_name = ctypes.c_char_p(b"something.else")
    assert not _core.torch_reads_init(None)
    real = _torch_build.table()
    if real is not None:                                # the real table, under another name
        pointer = ctypes.pythonapi.PyCapsule_GetPointer
        pointer.restype = ctypes.c_void_p
        pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        address = pointer(real, b"gdcore._torch_reads.TABLE")
        assert not _core.torch_reads_init(new(address, other_name, None))
    assert not _core.torch_reads_init(new(ctypes.addressof(table), right_name, None))
    table[0], table[1] = 1, 8                           # this abi, another size
    assert not _core.torch_reads_init(new(ctypes.addressof(table), right_name, None))
    p = torch.nn.Parameter(torch.ones(3))
    opt = gt.Adam([p], lr=0.1)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    assert fast_path_calls[-1] == 1
    assert torch.allclose(p, torch.full((3,), 1 - 0.3))


def test_concurrent_first_uses_compile_once(tmp_path):
    """Two processes start with an empty cache (as ranks of a distributed
    job): both load the reads, and one compiled binary is left, no
    temporary files."""
    if not _compiler_present():
        pytest.skip("no C++ compiler")
    script = textwrap.dedent("""
        import torch
        from gdcore import _torch_build
        capsule = _torch_build.table()
        print(capsule is not None, _torch_build.STATUS.split(" /")[0])
    """)
    env = dict(os.environ, GDCORE_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and out.startswith("True loaded"), out
    assert sorted(out.strip() for out in outs) == ["True loaded (cached)",
                                                   "True loaded (compiled)"], outs
    files = sorted(os.listdir(tmp_path))
    binaries = [f for f in files if not f.endswith(".lock")]
    assert len(binaries) == 1 and binaries[0].startswith("torch_reads-"), files


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad"])
def test_grads_fresh_from_backward_step_as_torch_and_are_released(name, cpp_reads,
                                                                  fast_path_calls):
    """backward() makes grads that have no Python object until read; the C++
    reads take them without making one.  The steps equal torch's, take the
    C path, and leave every grad with the references it had (compared with
    a twin model's grads that no optimizer touched)."""
    ours, ref, twin = _model(0), _model(0), _model(0)
    config = dict(lr=1e-2, momentum=0.9) if name == "SGD" else dict(lr=1e-2)
    our_opt = getattr(gt, name)(ours.parameters(), **config)
    ref_opt = getattr(torch.optim, name)(ref.parameters(), **config)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    for t in range(6):
        for model, opt in ((ours, our_opt), (ref, ref_opt), (twin, None)):
            if opt is not None:
                opt.zero_grad()
            else:
                model.zero_grad()
            model(x * (t + 1)).square().sum().backward()
            if opt is not None:
                opt.step()
        assert_params_match(list(ours.parameters()), list(ref.parameters()), f"{name} step {t}")
    assert_states_match(our_opt, ref_opt, name)
    assert fast_path_calls.count(1) >= 4, fast_path_calls
    for p, q in zip(ours.parameters(), twin.parameters()):
        assert p.grad._use_count() == q.grad._use_count()


def test_a_held_grad_is_released_after_the_step(cpp_reads, fast_path_calls):
    """A grad with a Python object: the step's reference is dropped after
    the kernel, and a grad dropped by its owner during training is freed."""
    import weakref
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = gt.Adam([p], lr=1e-2)
    for _ in range(3):
        p.grad = torch.randn(4, 3)
        opt.step()
    grad = p.grad
    before = grad._use_count(), sys.getrefcount(grad)
    opt.step()
    assert fast_path_calls[-1] == 1
    assert (grad._use_count(), sys.getrefcount(grad)) == before
    alive = weakref.ref(grad)
    del grad
    p.grad = None
    assert alive() is None


def test_inference_mode_grads_step_on_the_c_path_as_torch(cpp_reads, fast_path_calls):
    """A grad made under inference_mode lacks the autograd keys; it is a plain
    dense CPU tensor all the same, and steps as torch."""
    init = torch.randn(5, 4)
    ours, ref = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    our_opt, ref_opt = gt.Adam([ours], lr=1e-2), torch.optim.Adam([ref], lr=1e-2)
    for t in range(5):
        with torch.inference_mode():
            g = torch.randn(5, 4, generator=torch.Generator().manual_seed(t))
        ours.grad, ref.grad = g, g.clone()
        our_opt.step()
        ref_opt.step()
        assert_params_match([ours], [ref], f"step {t}")
    assert fast_path_calls.count(1) >= 3, fast_path_calls
