"""The `geoloc` command line: parses arguments and dispatches; the work lives in the modules.

Commands are grouped by what they touch (cli.data, cli.train, cli.answer, cli.bench), each importing
its own work inside the command, so `geoloc --help` and `geoloc data ...` load no torch.
"""
from __future__ import annotations

import os
import sys
import warnings

from retrieval import GeolocError
from retrieval.cli import data, train, answer, bench  # noqa: F401, I001 (each registers its commands, in this order)
from retrieval.cli.apps import app, say


def _format_warning(message, category, filename, lineno, file=None, line=None):
    say(f"warning: {message}")


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit status 2."""
    if not sys.stderr.isatty():
        # Redirected to a file: a progress line a minute, not every redraw (tqdm reads TQDM_* when
        # imported, which the commands do after this). Epoch lines are printed as they come.
        os.environ.setdefault("TQDM_MININTERVAL", "60")
    warnings.showwarning = _format_warning
    from retrieval.files import disk_full_message, is_disk_full, os_error_message

    try:
        app()
    except GeolocError as exc:
        say(f"error: {exc}")
        sys.exit(2)
    except OSError as exc:
        if exc.errno is None:
            raise
        say(f"error: {os_error_message(exc)}")
        sys.exit(2)
    except RuntimeError as exc:  # torch and faiss report a failed write this way
        if not is_disk_full(exc):
            raise
        say(f"error: {disk_full_message('a file', exc, atomic=False)}".splitlines()[0])
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # Only a command that trained or indexed under torchrun loaded it: --help and `data` load no torch.
        if "retrieval.learning.distributed" in sys.modules:
            sys.modules["retrieval.learning.distributed"].shutdown()
