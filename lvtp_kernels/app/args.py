"""What the ``lvtp`` subcommands share: argument parsers and the checks of input and output
paths, each failing with one line that names the flag (``CLIError`` / ``ValueError``)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch


def _one_line(exc: BaseException, limit: int = 600) -> str:
    """``exc`` as one line: an OSError as 'FILE: reason', any message's lines joined."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        names = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 is not None else "")
        msg = f"{names}: {exc.strerror}"
    else:
        msg = str(exc) if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError) and exc.args:
            msg = f"missing key {exc.args[0]!r}"
    msg = " ".join(part.strip() for part in msg.strip().splitlines() if part.strip())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _strip_prefix(msg: str, prefix: str) -> str:
    return msg[len(prefix):] if msg.startswith(prefix) else msg


MAX_SIDE = 4096  # --size: larger sides are a typo, not a ViT input


class CLIError(ValueError):
    """A bad input or argument: ``main`` prints its message as one line and exits 2."""

# --------------------------------------------------------------------------- input checks
def load_model_arg(path: Optional[str], flag: str = "--model"):
    """``load_reference(path)`` with any failure turned into an error naming ``flag`` and the
    file: a missing file, a file that is not an lvtp checkpoint, one with wrong shapes."""
    from ..models import load_reference

    shown = repr(path) if path else "(the bundled model)"
    if path and os.path.isfile(path) and not os.access(path, os.R_OK):
        raise PermissionError(f"{flag} {path!r} is not readable (permission denied)")
    try:
        return load_reference(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{flag} {_strip_prefix(_one_line(exc), 'load_reference: ')}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to load is the file's
        msg = _strip_prefix(_one_line(exc), "load_reference: ")
        if path and msg.startswith(repr(path)):
            raise CLIError(f"{flag} {msg}") from None
        raise CLIError(f"{flag} {shown} is not a usable lvtp checkpoint ({type(exc).__name__}: {msg})") from None


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(target: Path, flag: str, shown: str, is_dir: bool) -> None:
    """``target`` (absent) can be created: its nearest existing ancestor is a writable folder
    and the first missing folder on the way can be made (made and removed again: os.access
    is optimistic for root and on special file systems)."""
    target = Path(os.path.abspath(target))
    anc = _nearest_existing(target.parent)
    if not anc.is_dir():
        raise CLIError(f"{flag} {shown}: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {shown}: folder {str(anc)!r} is not writable")
    first = target if is_dir else target.parent
    if first == anc:
        return
    while first.parent != anc:
        first = first.parent
    try:
        first.mkdir()
        first.rmdir()
    except OSError as exc:
        raise CLIError(f"{flag} {shown}: cannot create folder {str(first)!r} ({_one_line(exc)})") from None


def check_output_file(path: Optional[str], flag: str) -> None:
    """``path`` can be written as a file (missing parent folders are created on write)."""
    if not path:
        return
    p, shown = Path(path), repr(str(path))
    if p.is_dir():
        raise CLIError(f"{flag} {shown} is a folder; give a file path")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise CLIError(f"{flag} {shown} exists and is not writable")
        return
    _check_creatable(p, flag, shown, is_dir=False)


def check_output_dir(path: Optional[str], flag: str) -> None:
    """``path`` is, or can be created as, a writable folder."""
    if not path:
        return
    p, shown = Path(path), repr(str(path))
    if p.exists():
        if not p.is_dir():
            raise CLIError(f"{flag} {shown} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise CLIError(f"{flag} {shown}: folder is not writable")
        return
    _check_creatable(p, flag, shown, is_dir=True)


def check_camvid_dir(data: str, splits: Sequence[str], limit: Optional[int] = None, flag: str = "--data") -> None:
    """``data`` has the CamVid layout for ``splits``: ``SPLIT.txt`` with 'image label' lines
    whose files exist (the first ``limit`` of them)."""
    from .data.camvid import read_pairs

    d = Path(data)
    if not d.exists():
        raise FileNotFoundError(f"{flag} {data!r}: folder not found")
    if not d.is_dir():
        raise CLIError(f"{flag} {data!r} is not a folder")
    for split in splits:
        # a sequence selection (seq:A / except:A) draws on train.txt and val.txt
        for name in (("train", "val") if ":" in split else (split,)):
            if not (d / f"{name}.txt").is_file():
                raise CLIError(f"{flag} {data!r} has no {name}.txt (the CamVid layout: {name}.txt lists "
                               "'image label' paths relative to the folder)")
        pairs = read_pairs(data, split)[:limit]
        missing = [f for pair in pairs for f in pair if not os.path.isfile(f)]
        if missing:
            raise CLIError(f"{flag} {data!r}: {split}.txt lists {len(missing)} missing file(s), e.g. {missing[0]!r}")


@contextlib.contextmanager
def writing(path, flag: str):
    """Turn an OSError while creating or writing ``path`` (given by ``flag``) into an error
    naming both: exit 2 where the path is at fault (missing, not a folder, read-only,
    permission), exit 1 otherwise (a full disk, ...)."""
    try:
        yield
    except OSError as exc:
        msg = f"{flag} {str(path)!r}: cannot write it ({_one_line(exc)})"
        if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
                            FileExistsError)) or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise CLIError(msg) from None
        raise OSError(msg) from None


_DEVICE_RE = re.compile(r"^(cpu|cuda)(:\d+)?$")


def _device_arg(text: str) -> str:
    t = text.strip().lower()
    if not _DEVICE_RE.match(t) or t.startswith("cpu:"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return t


def resolve_device(text: str, flag: str = "--device") -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch.device, checked against this machine."""
    dev = torch.device(_device_arg(text))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"{flag} {text}: CUDA is not available here (torch.cuda.is_available() is False); "
                           "use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise CLIError(f"{flag} {text}: only {n} CUDA device(s) visible (cuda:0..cuda:{n - 1})")
    return dev

# --------------------------------------------------------------------------- demo
def parse_hw(text: str, flag: str = "--size") -> Tuple[int, int]:
    """``HxW`` -> (H, W), both positive; a ValueError naming ``flag`` otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{flag} must be HxW (e.g. 512x512), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{flag} must be positive, got {text!r}")
    return h, w


def _parse_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 240x320, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"size must be at most {MAX_SIDE}x{MAX_SIDE}, got {text!r}")
    return h, w


def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


def _scale_range(text: str) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.5,1.0), got {text!r}") from None
    if not (0 < lo <= hi <= 4):
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI <= 4, got {text!r}")
    return lo, hi


def _reduction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {v}")
    return v

# --------------------------------------------------------------------------- eval
def _float_list(text: str) -> List[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (0.0 <= v < 1.0) for v in vals):
        raise argparse.ArgumentTypeError(f"reductions must be in [0, 1), got {text!r}")
    return vals


def _method_list(text: str) -> List[str]:
    from .baselines import parse_method

    names = [t.strip() for t in text.split(";" if ";" in text else ",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected at least one method, got {text!r}")
    for n in names:
        try:
            parse_method(n)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v
