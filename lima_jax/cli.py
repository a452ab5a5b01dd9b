"""What every command shares: the config-file flag, logging, and the one error handler.

A command that reads a run config takes ``--config FILE[:ARG]`` (a Python file whose
``get_config()`` returns an ``ml_collections.ConfigDict``) with ``--config.a.b=value`` overrides,
through ml_collections' ``config_flags``. The config is locked, so an override of a key the file
does not have stops before anything runs, naming the key. `load_config` is the same loader for
library code (benchmarks, curate, tests) that has a file or a ConfigDict and a list of overrides.
"""

from __future__ import annotations

import copy
import difflib
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence

import ml_collections

from lima_jax.errors import LimaError

NOISY_LOGGERS = ("absl", "orbax", "jax._src", "grain")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the moment of each record, not the stream it was
    made with: a command run twice in one process (tests, notebooks) whose stderr was swapped
    in between would otherwise write to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(quiet: Sequence[str] = (), fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """INFO logging for lima_jax to stderr, WARNING for the libraries that talk a lot."""
    # force: a library may have put a WARNING-level handler on the root logger at import.
    logging.basicConfig(level=logging.INFO, format=fmt, handlers=[_StderrHandler()], force=True)
    for name in (*NOISY_LOGGERS, *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_command(fn: Callable[..., object], *args, **kwargs) -> int:
    """Calls a command's body and returns its exit code (the body's int result, else 0); a
    LimaError (or a missing file) becomes one line on stderr, ``error: ...``, and the error's
    exit code instead of a traceback."""
    try:
        result = fn(*args, **kwargs)
        return result if isinstance(result, int) else 0  # a command's body may return its output
    except LimaError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def config_command(main: Callable[[ml_collections.ConfigDict], int | None], help_text: str,
                   argv: Sequence[str] | None = None, *, usage: str = "") -> None:
    """Runs `main(config)` as a command over ``--config FILE[:ARG]`` and ``--config.key=value``
    overrides (loaded by `load_config`), exiting with its code. ``-h`` / ``--help``
    prints `usage` and the flags and exits 0; a bad flag, file, key or value is one line."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "--helpshort") for a in args):
        print(f"{usage.strip()}\n\n  --config FILE[:ARG]     {help_text}\n"
              "  --config.KEY=VALUE      override one key of it (repeatable; unknown keys stop the run)")
        sys.exit(0)
    path, overrides = None, []
    queue = list(args)
    while queue:
        arg = queue.pop(0)
        name, eq, value = arg.partition("=")
        if name == "--config" or (name.startswith("--config.") and len(name) > len("--config.")):
            if not eq:
                if not queue:
                    sys.exit(_usage_error(f"{arg} needs a value"))
                value = queue.pop(0)
            if name == "--config":
                path = value
            else:
                overrides.append(f"{name.removeprefix('--config.')}={value}")
        else:
            sys.exit(_usage_error(f"unknown argument {arg!r}; use --config FILE and --config.KEY=VALUE"))
    if path is None:
        sys.exit(_usage_error("--config FILE is required"))
    try:
        config = load_config(path, overrides)
    except LimaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    sys.exit(main(config))


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_config(source: str | ml_collections.ConfigDict,
                overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A config with ``key=value`` overrides, parsed exactly as ``--config.key=value`` on a
    command line is (ml_collections' config_flags, locked). `source` is a config file
    (``FILE`` or ``FILE:ARG``, whose ``get_config()`` makes the config) or a ConfigDict (copied).
    An unknown key, a value of the wrong type or a file that does not load raises a LimaError."""
    if isinstance(source, ml_collections.ConfigDict):
        # A copy, so the caller's config stays as it was (deepcopy keeps values and references;
        # a ConfigDict built with sort_keys=False comes back sorted, so files are not copied).
        base = copy.deepcopy(source)
    else:
        base = _config_from_file(source)  # freshly made: the order of its keys is kept
    overrides = [item.removeprefix("--config.") for item in overrides]
    for item in overrides:
        _check_key(base, item.partition("=")[0])
    return _parse_overrides(base, overrides)


def _config_from_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (``FILE`` or ``FILE:ARG``), through config_flags."""
    from absl import flags
    from ml_collections import config_flags

    file = path.split(":", 1)[0]
    if not pathlib.Path(file).is_file():
        raise LimaError("no such config file", where=file, hint="give a configs/*.py path")
    values = flags.FlagValues()
    argv = ["load_config"]
    try:
        config_flags.DEFINE_config_file("config", path, "a config file", flag_values=values,
                                        lock_config=False, sys_argv=argv)
        values(argv)
        config = values.config
        config.to_dict  # noqa: B018 - a file that failed to load raises its error only when used
        if not isinstance(config, ml_collections.ConfigDict):
            raise TypeError(f"get_config() returned {type(config).__name__}, not a ConfigDict")
        return config
    except (AttributeError, flags.Error, OSError, SyntaxError, TypeError, ValueError) as err:
        raise LimaError(f"cannot load the config: {str(err).strip().splitlines()[-1].strip()}", where=file,
                        hint="a config file defines get_config() returning an ml_collections.ConfigDict"
                        ) from None


def _check_key(config: ml_collections.ConfigDict, key: str) -> None:
    """Raises a LimaError naming `config.<key>` (and the nearest existing key) when the
    config has no such key."""
    node = config
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = "config." + ".".join(key.split(".")[: depth + 1])
            known = sorted(node) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"keys here: {', '.join(known)}" if known else "it is not a section")
            raise LimaError("no such key", where=where, hint=hint)
        node = node[part]


def _parse_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    argv = ["load_config", *(f"--config.{item}" for item in overrides)]
    try:
        # config_flags finds the override flags in `sys_argv` when the flag is defined.
        config_flags.DEFINE_config_dict("config", config, flag_values=values, lock_config=True,
                                        sys_argv=argv)
        values(argv)
        return values.config
    except (flags.Error, TypeError, ValueError) as err:
        raise LimaError(str(err).removeprefix("flag ")) from None
