"""Benchmarks: ``python -m lima_jax.bench <what> [--json]``; each appends a row to bench/RESULTS.md.

Subcommands live in their own modules and register here (`BENCHMARKS`). A module has
``add_arguments(parser)`` and ``run(args) -> list[dict]``, one JSON object per measurement with
its figure and the ratio to a named baseline measured in the same run, and may declare
``VERSIONS`` (the packages whose versions its rows record) and ``DEVICE_IN_HARDWARE = True``
(its rows name the accelerator before the machine); `BEFORE_IMPORT` names a step a subcommand
runs before any benchmark module is imported (`gpu` installs packages a bare GPU image lacks).
This module stamps every row with what each benchmark records beside its figure, the hardware and
the package versions, so no benchmark imports it back; and it keeps the results table. A
LimaError prints as ``error: ...`` (exit 2).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import sys
from types import ModuleType
from typing import Any

from lima_jax.cli import run_command

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"

# name -> module with `add_arguments(parser)` and `run(args) -> list[dict]`.
BENCHMARKS = {
    "data": "lima_jax.data.bench",
    "train": "lima_jax.train.bench",
    "decode": "lima_jax.decode.bench",
    "attention": "lima_jax.kernels.bench",
    "dedup": "lima_jax.curate.bench",
    "gpu": "lima_jax.kernels.gpu_suite",
}
# name -> "module:function" called with the subcommand's arguments before any benchmark module is
# imported: `gpu` installs grain and tensorflow-datasets when a bare GPU image lacks them, which
# lima_jax.data (imported by the data and train benchmarks) needs.
BEFORE_IMPORT = {"gpu": "lima_jax.kernels.gpu_suite:install_missing"}

_HEADER = """# Benchmark results

Rows are appended by `python -m lima_jax.bench <what>`; every figure comes with a baseline
measured in the same run on the same machine, and their ratio (higher is better).

| date (UTC) | benchmark | hardware | versions | config | figure | baseline | ratio |
|---|---|---|---|---|---|---|---|
"""


def hardware(device: bool = False) -> str:
    """CPU model, core count and memory; with `device`, the first jax device's kind before them."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    machine = f"{cpu}, {os.cpu_count()} cores{memory}"
    if not device:
        return machine
    import jax  # only here: the data and dedup benchmarks never load it

    return f"{jax.devices()[0].device_kind} ({machine})"


def versions(packages: tuple[str, ...]) -> str:
    """'python 3.11.7, grain 0.2.18, ...' for the packages that are installed."""
    out = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def stamp(rows: list[dict[str, Any]], module: ModuleType) -> list[dict[str, Any]]:
    """`rows` with the `hardware` and `versions` the benchmark `module` declares for them."""
    common = {"hardware": hardware(device=getattr(module, "DEVICE_IN_HARDWARE", False)),
              "versions": versions(tuple(getattr(module, "VERSIONS", ())))}
    return [{**common, **row} for row in rows]


def append_result(row: dict[str, Any], path: pathlib.Path = RESULTS) -> None:
    """Appends one measurement to the results table (creating it with its header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(_HEADER)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    cells = [date, row["benchmark"], row["hardware"], row["versions"], row["config"],
             row["figure"], row.get("baseline", ""), row.get("ratio", "")]
    with path.open("a") as f:
        f.write("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BEFORE_IMPORT:
        module_name, function = BEFORE_IMPORT[argv[0]].split(":")
        getattr(importlib.import_module(module_name), function)(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m lima_jax.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    modules = {}
    for name, module_name in BENCHMARKS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ImportError as err:  # a package missing here (grain): only the one being run must import
            if argv[:1] == [name]:
                raise
            sub.add_parser(name, help=f"unavailable here: {err}")
            continue
        p = sub.add_parser(name, help=modules[name].__doc__.split("\n")[0])
        p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
        p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS}")
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    return run_command(_measure, modules[args.what], args)


def _measure(module: ModuleType, args: argparse.Namespace) -> int:
    """Runs one benchmark, prints its rows and records those that ask to be."""
    for row in stamp(module.run(args), module):
        print(json.dumps(row) if args.json else f"{row['name']}: {row['figure']}"
              + (f" (baseline {row['baseline']}, ratio {row['ratio']})" if row.get("baseline") else ""))
        if not args.no_record and row.get("record", True):
            append_result(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
