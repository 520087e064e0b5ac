"""The ``bpgpu`` command: ``info``, ``train``, ``evaluate``, ``predict``, ``export``,
``gradcheck``, ``demo``, ``warmup``, ``bench``.

Every error a user can cause prints one line on stderr and exits with status 2, with no traceback
(:data:`bpgpu.errors.USER_ERRORS`); output files are checked before training starts and written
atomically, so a failed run never leaves a half-written file. Each command is a module of this
package with its parser and its ``cmd_*`` function: :mod:`.train`, :mod:`.bench`, :mod:`.tools`.
"""

from __future__ import annotations

import signal
import sys

from .._version import __version__
from ..errors import USER_ERRORS, UsageError
from . import bench, export, predict, tools, train
from .common import Parser, choices
from .train import RESUMED_OPTIONS, _apply_recipe  # noqa: F401 (tests drive the recipe step)

__all__ = ["main", "build_parser", "UsageError", "RESUMED_OPTIONS"]


def build_parser():
    """The ``bpgpu`` argument parser (``parser.train_parser`` is the ``train`` subcommand's)."""
    parser = Parser(prog="bpgpu", description="Back-propagation MLPs on NumPy, Numba or CuPy.")
    parser.add_argument("--version", action="version", version=f"bpgpu {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, required=True)
    names = choices()
    tools.add_parsers(sub, names)
    parser.train_parser = train.add_parser(sub, names)
    bench.add_parser(sub, names)
    predict.add_parser(sub, names)
    export.add_parser(sub, names)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``bpgpu`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if getattr(args, "distributed", False):   # one rank of mpirun -n P bpgpu ... --distributed
            from ..distributed import run_command
            return run_command(args.func, args)
        return args.func(args)
    except USER_ERRORS as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"bpgpu: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as exc:   # e.g. --hidden 100000000: the sizes asked for more than there is
        print(f"bpgpu: error: not enough memory for what was asked{f' ({exc})' if str(exc) else ''}"
              " (smaller --hidden, --batch-size or --samples?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"bpgpu: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
