"""The application wing: the ``lvtp`` command line and what it runs on top of the kernel
library (CamVid data and metrics, reference training, evaluation against baselines,
benchmarks, figures).

    cli       the ``lvtp`` command (args: its shared argument and path checks)
    data      CamVid reading, augmentation, sequence splits, metrics and bootstrap intervals
    train     ``lvtp train-reference``
    evaluate  ``lvtp eval``: LVTP and the baselines at equal GFLOPs
    baselines the baseline token reducers (random, EViT, ToMe, ...)
    bench     ``lvtp bench e2e`` / ``lvtp bench ops`` (timing harness: microbench)
    viz       ``lvtp viz`` and the demo figures
    segment   image batches in, label maps out

The rule (tests/test_layout.py): the kernel library (``lvtp_kernels`` outside ``app``)
never imports this package; this package uses the library's public modules.
"""
