import os

# Triton kernels run on the CPU through the interpreter; this must be set before
# anything imports triton (importing torch does not). On a machine with a GPU the
# kernels compile for it instead (LVTP_TEST_INTERPRET=1 forces the interpreter there).
import torch  # noqa: E402

if not torch.cuda.is_available() or os.environ.get("LVTP_TEST_INTERPRET") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

import lvtp_kernels  # noqa: E402,F401  (registers torch.ops.lvtp.*)

# Hypothesis profiles of the property-based tests (tests/test_fuzz.py; see docs/robustness.md).
# max_examples is per test; test_fuzz.py has FUZZ_TESTS_CPU tests that run on a CPU-only
# machine, so "ci" runs ~2,500 examples in total and "long" ~120,000.
#   ci   (default): derandomized (a fixed seed per test) and no example database, so a CI
#                   run is reproducible; ~3-4 minutes on 2 cores.
#   long           `pytest tests/test_fuzz.py --hypothesis-profile=long` for release checks:
#                   random seeds (each run explores new inputs; a failure prints the
#                   @reproduce_failure blob and the seed to rerun it).
#   dev            a quick smoke run (10 per test) while editing.
FUZZ_TESTS_CPU = 25
_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=4800, derandomize=False, database=None, **_COMMON)
settings.register_profile("dev", max_examples=10, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON)  # no shrinking
# --hypothesis-profile=NAME (hypothesis' pytest plugin) overrides this default.
settings.load_profile(os.environ.get("LVTP_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
