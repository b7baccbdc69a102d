"""lvtp-kernels: LVTP token pruning for plain Vision Transformers doing semantic segmentation.

Importing the package registers ``torch.ops.lvtp.*`` (see ``registry``) and exposes the
one-call model patch::

    import lvtp_kernels
    lvtp_kernels.patch(model, flops_reduction=0.3)   # or schedule=[(3, 0.7), (6, 0.7), (9, 0.7)]
    logits = model(images)
    lvtp_kernels.unpatch(model)
"""

__version__ = "0.1.0"

from . import registry  # noqa: F401  (generic dispatch)
from . import ops  # noqa: F401  (defines torch.ops.lvtp.*, one module per op family)
from . import _ext  # noqa: F401  (the compiled kernels of csrc/, when built)
from . import flops  # noqa: F401  (flop formulas for FlopCounterMode)
from .flops import schedule_for_flops  # noqa: E402
from .models.patching import is_patched, last_records, patch, unpatch  # noqa: E402

__all__ = ["patch", "unpatch", "is_patched", "last_records", "schedule_for_flops", "registry", "flops", "__version__"]
