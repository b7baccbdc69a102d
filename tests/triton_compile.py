"""Compile Triton kernels for sm_90 offline (Triton's own ptxas, no GPU), in a fresh
process without TRITON_INTERPRET: the GPU path of kernels that CI runs interpreted."""

import os
import subprocess
import sys
import textwrap

HEADER = '''
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget

def comp(fn, sig, consts):
    sig = dict(sig, **{k: "constexpr" for k in consts})
    src = triton.compiler.ASTSource(fn=fn, signature=sig,
                                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm
'''


def compile_for_hopper(body: str) -> None:
    """Run ``body`` (which calls ``comp(kernel, signature, constexprs)``) after HEADER;
    an AssertionError carries the child's stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = HEADER + textwrap.dedent(body)
    res = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
