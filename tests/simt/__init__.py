"""simt: a CPU emulator for the CUDA kernels of csrc/ (see simt.h and build.py)."""
