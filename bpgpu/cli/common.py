"""What every ``bpgpu`` command shares: the parser that reports errors in one line, argument
types, the names each option accepts, output-path checks and JSON records."""

from __future__ import annotations

import argparse
import json
import math

from ..errors import UsageError

__all__ = ["Parser", "UsageError", "csv_ints", "int_at_least", "positive_int",
           "nonnegative_int", "positive_float", "writable", "distinct_outputs", "write_json",
           "choices", "add_backend_arg", "add_tf32_arg", "apply_tf32", "need_matplotlib"]


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are :class:`UsageError` (one line, exit 2)."""

    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def csv_ints(text):
    """``"256,128"`` -> ``[256, 128]`` (an argparse type; a list passes through unchanged)."""
    if isinstance(text, list):
        return text
    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def int_at_least(low):
    """An argparse type: an integer >= ``low``, with a one-line message otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int, nonnegative_int = int_at_least(1), int_at_least(0)


def positive_float(text):
    """An argparse type: a finite number > 0 (``nan``, ``inf``, 0 and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


positive_float.__name__ = "number > 0"


def writable(path, what):
    """UsageError unless ``path`` (None: nothing to check) can be written as a file now: not
    empty, not something other than a regular file (a symbolic link is followed to its target),
    in a directory that exists and where a file can really be created and renamed
    (:func:`bpgpu.files.check_writable`). The message names ``what`` (the option) and the path
    as the user gave it."""
    if path is None:
        return
    from ..files import WriteError, check_writable
    if not str(path):
        raise UsageError(f"{what} '': an empty file name")
    try:
        check_writable(path)
    except WriteError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None


def distinct_outputs(outputs, inputs=()):
    """UsageError unless the files of one command are all different after following links.

    Parameters
    ----------
    outputs : sequence of (what, path)
        The files the command writes (``what`` names the option); None paths are skipped.
    inputs : sequence of (what, path, allowed)
        Files the command reads: no output may be one of them, except the output options named
        in ``allowed`` (``--checkpoint`` continues the checkpoint ``--resume`` reads).
    """
    from ..files import file_identity
    seen = {}
    for what, path in outputs:
        if path is None:
            continue
        key = file_identity(path)
        if key in seen:
            other, other_path = seen[key]
            raise UsageError(f"{what} {path} is the same file as {other} {other_path}: one "
                             "would overwrite the other; give each output its own file")
        seen[key] = (what, path)
    for what, path, allowed in inputs:
        if path is None:
            continue
        hit = seen.get(file_identity(path))
        if hit is not None and hit[0] not in allowed:
            raise UsageError(f"{hit[0]} {hit[1]} would overwrite {what} {path}, which this "
                             "command reads")


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    from ..files import atomic_write
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode() + b"\n"))


def choices():
    """The names each option accepts, from the tables of the modules that own them."""
    from ..activations import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
    from ..backends import backend_names
    from ..demos import DEMOS
    from ..init import INITS
    from ..network import DTYPES
    from ..optim import OPTIMIZERS
    from ..recipes import RECIPES
    return dict(activation=HIDDEN_ACTIVATIONS, output=OUTPUT_ACTIVATIONS, loss=LOSSES, init=INITS,
                optimizer=OPTIMIZERS, backend=("auto",) + backend_names(), dtype=tuple(DTYPES),
                demo=tuple(DEMOS), recipe=tuple(RECIPES))


def add_backend_arg(p, names):
    p.add_argument("--backend", default="auto", choices=names["backend"],
                   help="default: auto (the best available, or $BPGPU_BACKEND)")


def add_tf32_arg(p):
    p.add_argument("--tf32", action="store_true",
                   help="float32 GEMMs on the GPU may use TF32 tensor cores (faster, ~1e-3 "
                        "relative error; compute capability 8.0 or newer)")


def apply_tf32(args, backends):
    """``--tf32``: float32 GEMMs on the GPU may use TF32 tensor cores. One process-wide CuPy
    setting (:func:`bpgpu.backends.set_tf32`): it holds for every cupy model of the run, and
    describe(), ``bpgpu info`` and bench records report it."""
    if not getattr(args, "tf32", False):
        return
    if getattr(args, "dtype", "float32") != "float32":
        raise UsageError(f"--tf32 applies to float32 GEMMs, not --dtype {args.dtype}")
    if not set(backends) & {"auto", "cupy"}:
        raise UsageError("--tf32 applies to the cupy backend (float32 GEMMs on an NVIDIA GPU)")
    from ..backends import set_tf32
    from ..errors import BackendUnavailable
    try:
        set_tf32(True)       # ConfigError below compute capability 8.0
    except BackendUnavailable as exc:
        raise UsageError(f"--tf32 needs the cupy backend: {exc}") from None


def need_matplotlib(flag):
    """UsageError unless matplotlib imports (``flag`` names the option that needs it)."""
    from .._compat import optional_import
    if optional_import("matplotlib") is None:
        raise UsageError(f"{flag} needs matplotlib: pip install 'bpgpu[plot]'")
