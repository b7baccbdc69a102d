import os

# Triton kernels run on the CPU through the interpreter; this must be set before
# anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import lvtp_kernels  # noqa: E402,F401  (registers torch.ops.lvtp.*)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
