"""Build the simt emulation of csrc/*.cu into a shared library (tests only).

The CUDA sources compile unchanged for the host: they write every kernel launch and every
shared-memory declaration through the macros of ``csrc/lvtp_cuda_launch.cuh``
(``LVTP_LAUNCH(kernel, grid, block, smem, stream)(args...)``, ``LVTP_SHARED_ARRAY``,
``LVTP_DYNAMIC_SMEM``), which ``simt.h`` defines for the host compiler (``::simt::launch``,
``::simt::poison_shared``, ``::simt::dynamic_smem``). Each ``.cu`` file -- and
``selftest.cu``, kernels with known defects that the emulator must report -- is compiled
as it is, with ``g++ -x c++ -include simt.h``; no text is rewritten.

:func:`check_sources` runs first and refuses, naming file and line, a raw ``<<<`` launch or
a raw ``__shared__`` in ``csrc/*.cu``, ``*.cuh``, ``*.h`` (the macro header excepted) or in
``selftest.cu``: such code would bypass the emulator's launch checks and shared-memory
poisoning (simt.h has no ``__shared__``, so it would not compile either, less clearly).

The objects, ``simt.cc`` and ``harness.cc`` are then linked into a library cached under
``build/simt/<hash of the inputs>/``. ``-ffp-contract=off``: no fused multiply-add, like the
explicit ``__d*_rn`` operations.

``build_memcheck()`` compiles the same sources with AddressSanitizer and
UndefinedBehaviorSanitizer, plus ``memcheck_main.cc``, into an executable: the CPU's
counterpart of compute-sanitizer's memcheck (buffers of exact size, every access checked).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CUDA_SOURCES = sorted((ROOT / "csrc").glob("*.cu")) + [HERE / "selftest.cu"]
RUNTIME = [HERE / "simt.h", HERE / "simt.cc", HERE / "harness.cc", HERE / "memcheck_main.cc", HERE / "cuda_runtime.h",
           HERE / "cuda_runtime_api.h"]
MACRO_HEADER = ROOT / "csrc" / "lvtp_cuda_launch.cuh"
HEADERS = sorted((ROOT / "csrc").glob("*.h")) + sorted((ROOT / "csrc").glob("*.cuh"))
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
         "-Wno-unused-function",
         "-Wno-sign-compare"]


class SimtUnavailable(RuntimeError):
    pass


class RawCudaSyntax(RuntimeError):
    """A raw ``<<<`` launch or ``__shared__`` declaration outside csrc/lvtp_cuda_launch.cuh."""


# comments, string and character literals: blanked before looking for raw syntax
_NOT_CODE = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S)
_RAW = re.compile(r"<<<|\b__shared__\b")


def raw_cuda_syntax(text: str) -> list:
    """(line, token) of every raw ``<<<`` / ``__shared__`` in the code (not the comments) of ``text``."""
    code = _NOT_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return [(code.count("\n", 0, m.start()) + 1, m.group(0)) for m in _RAW.finditer(code)]


def check_sources(paths=None) -> None:
    """Raise RawCudaSyntax listing every raw launch / shared-memory keyword of the CUDA sources."""
    if paths is None:
        paths = CUDA_SOURCES + [h for h in HEADERS if h != MACRO_HEADER]
    found = [f"{p}:{line}: raw `{tok}`" for p in paths for line, tok in raw_cuda_syntax(Path(p).read_text())]
    if found:
        raise RawCudaSyntax(
            "simt: launch kernels and declare shared memory through the macros of csrc/lvtp_cuda_launch.cuh "
            "(LVTP_LAUNCH, LVTP_SHARED_ARRAY, LVTP_DYNAMIC_SMEM), which the emulator defines for the host "
            "compiler:\n  " + "\n  ".join(found))


def _digest() -> str:
    h = hashlib.sha256()
    for p in CUDA_SOURCES + RUNTIME + HEADERS + [Path(__file__)]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(FLAGS).encode())
    return h.hexdigest()[:16]


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


def _run(cmd: list, cwd: Path) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"simt build failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")


def _compile(kind: str, extra: list, sources: list, output: str, cxx: str | None, out_root: Path | None) -> Path:
    check_sources()
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise SimtUnavailable("simt: no C++ compiler (g++) found")
    out = (out_root or ROOT / "build" / "simt") / f"{kind}-{_digest()}"
    target = out / output
    if target.exists():
        return target
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    common = [cxx, *FLAGS, *extra, f"-I{HERE}", f"-I{ROOT / 'csrc'}"]
    # the .cu files as they are, as C++ with the emulator's runtime and macros included first
    _run([*common, "-c", "-x", "c++", "-include", str(HERE / "simt.h"), *map(str, CUDA_SOURCES)], tmp)
    objects = [str(tmp / (cu.stem + ".o")) for cu in CUDA_SOURCES]
    _run([*common, "-o", str(tmp / output), *map(str, sources), *objects], tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build(cxx: str | None = None, out_root: Path | None = None) -> Path:
    """Compile (once per input hash) and return the library's path."""
    return _compile("lib", ["-shared"], [HERE / "simt.cc", HERE / "harness.cc"], "libsimt.so", cxx, out_root)


def build_memcheck(cxx: str | None = None, out_root: Path | None = None) -> Path:
    """The sanitized executable (see memcheck_main.cc); raises SimtUnavailable when the
    compiler cannot link the sanitizers."""
    try:
        return _compile("memcheck", SANITIZE, [HERE / "simt.cc", HERE / "harness.cc", HERE / "memcheck_main.cc"],
                        "simt_memcheck", cxx, out_root)
    except RawCudaSyntax:
        raise
    except RuntimeError as e:
        if "asan" in str(e).lower() or "ubsan" in str(e).lower():
            raise SimtUnavailable(f"simt: the compiler cannot build with the sanitizers: {str(e)[-300:]}") from e
        raise


def load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    lib.simt_message.restype = ctypes.c_char_p
    lib.simt_guard_message.restype = ctypes.c_char_p
    lib.simt_smem_optin.restype = ctypes.c_int
    return lib
