import os

# Triton kernels run on the CPU through the interpreter; this must be set before
# anything imports triton (importing torch does not). On a machine with a GPU the
# kernels compile for it instead (LVTP_TEST_INTERPRET=1 forces the interpreter there).
import torch  # noqa: E402

if not torch.cuda.is_available() or os.environ.get("LVTP_TEST_INTERPRET") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import lvtp_kernels  # noqa: E402,F401  (registers torch.ops.lvtp.*)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
