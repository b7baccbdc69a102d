"""Build the simt emulation of csrc/*.cu into a shared library (tests only).

The CUDA sources are rewritten textually for the host compiler -- three rewrites, each
counted so that new syntax is noticed instead of silently skipped:

* ``kernel<<<grid, block[, smem[, stream]]>>>(args);`` becomes
  ``::simt::launch(<kernel address>, [&] { kernel(args); }, grid, block, smem, stream);``
* ``__shared__ T name[...];`` gets a ``::simt::poison_shared(name, sizeof(name))`` after it;
* ``extern __shared__ ... T name[];`` becomes ``T* name = (T*)::simt::dynamic_smem();``.

``selftest.cu`` (kernels with known defects, which the emulator must report) goes through
the same rewrites. Then the sources, ``simt.cc`` and ``harness.cc`` are compiled with g++ (``-ffp-contract=off``:
no fused multiply-add, like the explicit ``__d*_rn`` operations) into a library cached under
``build/simt/<hash of the inputs>/``.

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
HEADERS = sorted((ROOT / "csrc").glob("*.h"))
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
         "-Wno-unused-function",
         "-Wno-sign-compare"]

_LAUNCH = re.compile(r"([A-Za-z_]\w*(?:\s*<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\)\s*;", re.S)
_SHARED = re.compile(r"(?<!extern )__shared__\s+([^;\[\]]+?)\s+(\w+)((?:\s*\[[^\]]*\])+)\s*;")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([^;\[\]]+?)\s+(\w+)\s*\[\s*\]\s*;")


class SimtUnavailable(RuntimeError):
    pass


def translate(text: str) -> str:
    """The host-compiler version of one .cu file's text."""
    n_launch = text.count("<<<")
    text, n = _LAUNCH.subn(
        lambda m: f"::simt::launch(reinterpret_cast<const void*>(&{m.group(1)}), [&]() {{ {m.group(1)}({m.group(3)}); }}, "
        f"{m.group(2)});",
        text,
    )
    if n != n_launch:
        raise SimtUnavailable(f"simt: rewrote {n} of {n_launch} kernel launches; extend build.py")
    n_ext = len(re.findall(r"extern\s+__shared__", text))
    text, n = _EXTERN_SHARED.subn(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(::simt::dynamic_smem());", text)
    if n != n_ext:
        raise SimtUnavailable(f"simt: rewrote {n} of {n_ext} extern __shared__ declarations; extend build.py")
    n_sh = text.count("__shared__")
    text, n = _SHARED.subn(lambda m: f"static {m.group(1)} {m.group(2)}{m.group(3)}; ::simt::poison_shared({m.group(2)}, sizeof({m.group(2)}));", text)
    if n != n_sh:
        raise SimtUnavailable(f"simt: rewrote {n} of {n_sh} __shared__ declarations; extend build.py")
    return text


def _digest() -> str:
    h = hashlib.sha256()
    for p in CUDA_SOURCES + RUNTIME + HEADERS + [Path(__file__)]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(FLAGS).encode())
    return h.hexdigest()[:16]


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


def _compile(kind: str, extra: list, sources: list, output: str, cxx: str | None, out_root: Path | None) -> Path:
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise SimtUnavailable("simt: no C++ compiler (g++) found")
    out = (out_root or ROOT / "build" / "simt") / f"{kind}-{_digest()}"
    target = out / output
    if target.exists():
        return target
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    srcs = list(sources)
    for cu in CUDA_SOURCES:
        dst = tmp / (cu.stem + "_simt.cc")
        dst.write_text(f'// generated from {cu.name} by tests/simt/build.py\n#line 1 "{cu}"\n' + translate(cu.read_text()))
        srcs.append(dst)
    cmd = [cxx, *FLAGS, *extra, f"-I{HERE}", f"-I{ROOT / 'csrc'}", "-o", str(tmp / output), *map(str, srcs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"simt build failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")
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
