"""Build script. Package metadata lives in pyproject.toml.

The compiled clustering ops (csrc/: C++ always, CUDA when a CUDA torch and nvcc exist)
are added here as extensions once they exist; today the package is pure Python plus
Triton and every op runs through python_ref.
"""

from setuptools import setup

setup()
