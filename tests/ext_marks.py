"""Skip markers shared by the tests of the compiled (C++/CUDA) backends."""

import pytest
import torch

import lvtp_kernels._ext as ext

HAVE_CPP = ext.status()["cpp"][0]
HAVE_CUDA = ext.status()["cuda"][0] and torch.cuda.is_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason=f"C++ extension not built: {ext.status()['cpp'][1]}")
needs_cuda = pytest.mark.skipif(
    not HAVE_CUDA,
    reason="needs a CUDA GPU and the CUDA extension ("
    + ("no GPU" if not torch.cuda.is_available() else ext.status()["cuda"][1]) + ")",
)


def compiled(name):
    """The compiled kernel ``name`` (a function of lvtp_kernels._C / _C_cuda), called as the
    cpp / cuda backend calls it: on the module of its tensors' device, without the op's
    validation."""

    def call(*args):
        dev = next(a.device for a in args if isinstance(a, torch.Tensor))
        return getattr(ext.module("cuda" if dev.type == "cuda" else "cpp"), name)(*args)

    return call


def compiled_select(*args):
    """The compiled select; the 9 arguments of the spec's select get allocation "ranked"."""
    return compiled("select")(*(args if len(args) == 10 else (*args, "ranked")))


def opcheck_compiled(op, args):
    """torch.library.opcheck of ``torch.ops.lvtp.<op>`` with its compiled backend forced
    (LVTP_IMPL=cpp on CPU tensors, cuda on CUDA tensors): the backend's outputs against the
    op's fake kernel, schema, and torch.compile."""
    from lvtp_kernels import registry

    dev = next(a.device for a in args if isinstance(a, torch.Tensor))
    backend = "cuda" if dev.type == "cuda" else "cpp"
    with registry.forced_impl(backend):
        assert registry.choose_backend(op, dev.type) == backend
        torch.library.opcheck(getattr(torch.ops.lvtp, op), args)


def use_triton(monkeypatch, *ops):
    """LVTP_IMPL=triton for the test, and check that each of ``ops`` really runs Triton on
    CPU tensors (the interpreter)."""
    from lvtp_kernels import registry

    monkeypatch.setenv("LVTP_IMPL", "triton")
    for op in ops:
        assert registry.choose_backend(op, "cpu") == "triton", op
