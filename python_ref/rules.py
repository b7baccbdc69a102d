"""The integer and tolerance rules that the exact (python_ref.ops) and fast
(python_ref.fast) selections share: the budget of step 5.3 and the 2-means tie tolerance."""

from __future__ import annotations

import math

TIE_RTOL = 1e-12  # two_means_split: relative tolerance under which split costs are tied


def budget(n_tokens: int, num_protected: int, keep_ratio: float) -> int:
    """Step 5.3: K = max(1, floor(keep_ratio * (N - P) + 0.5)) non-protected tokens kept."""
    return max(1, int(math.floor(keep_ratio * (n_tokens - num_protected) + 0.5)))
