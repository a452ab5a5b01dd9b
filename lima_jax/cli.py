"""What every command shares: the config-file flag, logging, and the one error handler.

A command that reads a run config takes ``--config FILE[:ARG]`` (a Python file whose
``get_config()`` returns an ``ml_collections.ConfigDict``) with ``--config.a.b=value`` overrides,
through ml_collections' ``config_flags``. The config is locked, so an override of a key the file
does not have stops before anything runs, naming the key. `load_config` is the same loader for
library code (benchmarks, curate, tests) that has a file or a ConfigDict and a list of overrides.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Callable, Sequence

import ml_collections

from lima_jax.errors import LimaError

NOISY_LOGGERS = ("absl", "orbax", "jax._src", "grain")


def setup_logging(quiet: Sequence[str] = ()) -> None:
    """INFO logging for lima_jax, WARNING for the libraries that talk a lot."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in (*NOISY_LOGGERS, *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_command(fn: Callable[..., int | None], *args, **kwargs) -> int:
    """Calls a command's body; a LimaError (or a missing file) becomes one line on stderr,
    ``error: ...``, and the error's exit code instead of a traceback."""
    try:
        return fn(*args, **kwargs) or 0
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
    from absl import flags
    from ml_collections import config_flags

    where = "config" if isinstance(source, ml_collections.ConfigDict) else source
    if not isinstance(source, ml_collections.ConfigDict):
        file = source.split(":", 1)[0]
        if not pathlib.Path(file).is_file():
            raise LimaError("no such config file", where=file, hint="give a configs/*.py path")
    values = flags.FlagValues()
    argv = ["load_config", *(f"--config.{item.removeprefix('--config.')}" for item in overrides)]
    try:
        # config_flags finds the override flags in `sys_argv` when the flag is defined.
        if isinstance(source, ml_collections.ConfigDict):
            config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict(source.to_dict()),
                                            flag_values=values, lock_config=True, sys_argv=argv)
        else:
            config_flags.DEFINE_config_file("config", source, "a config file", flag_values=values,
                                            lock_config=True, sys_argv=argv)
        values(argv)
        config = values.config
        config.get("workdir")  # a file that failed to load raises only when first used
        return config
    except (AttributeError, KeyError) as err:
        key = str(err.args[0] if err.args else err).strip("'\"")
        raise LimaError(f"the config has no key {key!r}", where=where,
                        hint="an override must name a key the config has") from None
    except (flags.Error, OSError, SyntaxError, TypeError, ValueError) as err:
        raise LimaError(str(err), where=where) from None
