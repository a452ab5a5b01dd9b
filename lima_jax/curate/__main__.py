"""Command line for curation: a raw dump in, a LIMA-style training file and its report out.

  python -m lima_jax.curate run --data dump.jsonl --out curated.jsonl [--report report.md]
      [--report-json report.json] [--eval ../shared/data/lima/test.jsonl,...] [--removed removed.jsonl]
      [--config my_curate.py] [--config.dedup.threshold=0.8 ...]
  python -m lima_jax.curate dedup --data FILES --out kept.jsonl [--report ...]
  python -m lima_jax.curate decontaminate --data FILES --eval FILES --out kept.jsonl [--keep]
  python -m lima_jax.curate select --data FILES --out OUT.jsonl --method stratified|longest|random|nested
      [--n N] [--quotas table1 | src=400,wikihow=200] [--sizes 1000,2000] [--seed 0]
  python -m lima_jax.curate influence --data POOL --target TARGET --n N --out OUT.jsonl
      (--tokenizer tokenizer.model | --train-tokenizer-vocab 512) [--preset tiny | --init-from CKPT]

Inputs are ``qa`` dumps or any instruction format the data package reads (records.py); outputs
are LIMA JSON Lines by default (``--output-format qa`` keeps scores and metadata), each written
whole or not at all (a temporary file renamed over the target), and never over one of the inputs.
A data or config problem prints ``error: where: what (what to do)`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from lima_jax.cli import run_command
from lima_jax.curate import records as records_lib
from lima_jax.curate.config import load_curate_config
from lima_jax.data.errors import DataError
from lima_jax.jsonl import write_json, write_text_atomic


def _io(p: argparse.ArgumentParser, out_help: str = "where the kept records go (.jsonl)",
        curate_options: bool = True) -> None:
    p.add_argument("--data", required=True, help="input file(s), comma-separated")
    p.add_argument("--format", default="auto", help="auto | " + " | ".join(records_lib.FORMATS))
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--output-format", default="lima", help="lima (for training) | qa (keeps every field)")
    if not curate_options:
        return
    p.add_argument("--config", default="", help="a .py file whose get_config() returns the curate config")
    p.add_argument("--report", default="", help="write the Markdown report here")
    p.add_argument("--report-json", default="", help="write the JSON report here")


def _write_report(args: argparse.Namespace, built: dict) -> None:
    from lima_jax.curate import report

    if args.report:
        write_text_atomic(args.report, report.to_markdown(built))
    if args.report_json:
        write_json(args.report_json, built)


# The options that name files a command writes, and those that name files it reads.
OUTPUT_OPTIONS = ("out", "removed", "report", "report_json", "scores")
INPUT_OPTIONS = ("data", "eval", "target")


def _refuse_overwriting_inputs(args: argparse.Namespace) -> None:
    """A DataError when an output is one of the inputs: the curated subset would replace the data."""
    inputs = {pathlib.Path(p).resolve() for name in INPUT_OPTIONS
              for p in records_lib.split_paths(getattr(args, name, "") or "")}
    for name in OUTPUT_OPTIONS:
        value = getattr(args, name, "") or ""
        if value and pathlib.Path(value).resolve() in inputs:
            raise DataError(f"--{name.replace('_', '-')}", f"{value} is also an input",
                            "write to another file; the input is left as it is", "config")


def _stages(built: dict) -> str:
    return " -> ".join(f"{s['stage']} {s['records']:,}" for s in built["stages"])


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    from lima_jax.curate.contamination import read_eval_prompts
    from lima_jax.curate.pipeline import curate

    config = load_curate_config(args.config, overrides)
    if args.eval:
        config.contamination.eval_sets = args.eval
    data = records_lib.read_records(args.data, args.format)
    prompts = read_eval_prompts(config.contamination.eval_sets) if config.contamination.eval_sets else ()
    result = curate(data, config, prompts, files=records_lib.split_paths(args.data))
    records_lib.write_records(args.out, result.records, args.output_format)
    if args.removed:
        removed = [dataclasses.replace(r, meta={**r.meta, "removed_by": stage})
                   for stage, rs in result.removed.items() for r in rs]
        records_lib.write_records(args.removed, removed, "qa")
    _write_report(args, result.report)
    print(f"{_stages(result.report)}; wrote {len(result.records):,} records to {args.out}")


def _dedup(args: argparse.Namespace, overrides: list[str]) -> None:
    from lima_jax.curate import report
    from lima_jax.curate.dedup import dedup_records
    from lima_jax.curate.pipeline import dedup_summary

    config = load_curate_config(args.config, overrides)
    data = records_lib.read_records(args.data, args.format)
    result = dedup_records(data, config)
    records_lib.write_records(args.out, result.kept, args.output_format)
    built = report.build_report(data, result.kept, files=records_lib.split_paths(args.data),
                                dedup=dedup_summary(result, data, config),
                                stages=[("read", len(data)), ("duplicates", len(result.kept))])
    _write_report(args, built)
    print(f"{len(result.clusters)} duplicate clusters, {len(result.removed)} removed; "
          f"wrote {len(result.kept):,} records to {args.out}")


def _decontaminate(args: argparse.Namespace, overrides: list[str]) -> None:
    from lima_jax.curate import contamination, report

    config = load_curate_config(args.config, overrides)
    data = records_lib.read_records(args.data, args.format)
    prompts = contamination.read_eval_prompts(args.eval)
    c = config.contamination
    hits = contamination.find_contamination(data, prompts, c.ngram, c.fields)
    kept = data if args.keep else contamination.remove_contaminated(data, hits)[0]
    records_lib.write_records(args.out, kept, args.output_format)
    built = report.build_report(
        data, kept, files=records_lib.split_paths(args.data),
        contamination=contamination.contamination_report(data, prompts, hits, not args.keep),
        stages=[("read", len(data)), ("contamination", len(kept))])
    _write_report(args, built)
    print(f"{len({h.record for h in hits})} records overlap {len(prompts)} evaluation prompts; "
          f"wrote {len(kept):,} records to {args.out}")


def _quotas(spec: str) -> dict[str, int]:
    from lima_jax.curate import select

    if spec == "table1":
        return dict(select.TABLE1_QUOTAS)
    quotas = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        source, _, count = part.rpartition("=")
        if not source or not count.isdigit():
            raise DataError("--quotas", f"cannot read {part!r}", "write table1 or source=count,source=count",
                            "config")
        quotas[source] = int(count)
    if not quotas:
        raise DataError("--quotas", "no quotas given", "write table1 or source=count,...", "config")
    return quotas


def _select(args: argparse.Namespace, overrides: list[str]) -> None:
    from lima_jax.curate import select

    if overrides:
        raise DataError(overrides[0], "select takes no --config overrides", "", "config")
    data = records_lib.read_records(args.data, args.format)
    # select.py works on plain dicts and returns the very objects it was given: map them back.
    dicts = [records_lib.to_json(r, "qa") for r in data]
    back = {id(d): r for d, r in zip(dicts, data, strict=True)}
    try:
        if args.method == "nested":
            if "{size}" not in args.out:
                raise DataError("--out", "nested subsets need {size} in the output path",
                                "e.g. --out subsets/random_{size}.jsonl", "config")
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
            for size, chosen in select.nested_subsets(dicts, sizes, args.seed).items():
                path = args.out.replace("{size}", str(size))
                records_lib.write_records(path, [back[id(d)] for d in chosen], args.output_format)
                print(f"wrote {len(chosen):,} records to {path}")
            return
        if args.method == "stratified":
            chosen = select.stratified(dicts, _quotas(args.quotas), args.seed)
        elif args.method == "longest":
            chosen = select.longest_n(dicts, args.n)
        elif args.method == "random":
            chosen = select.random_n(dicts, args.n, args.seed)
        else:
            raise DataError("--method", f"unknown method {args.method!r}",
                            "choose stratified, longest, random or nested", "config")
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"select {args.method}", str(e), "", "config") from None
    records_lib.write_records(args.out, [back[id(d)] for d in chosen], args.output_format)
    print(f"{args.method}: wrote {len(chosen):,} of {len(data):,} records to {args.out}")


def _influence(args: argparse.Namespace, overrides: list[str]) -> None:
    from lima_jax.curate.influence_cli import run_influence

    if overrides:
        raise DataError(overrides[0], "influence takes no --config overrides", "", "config")
    run_influence(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lima_jax.curate", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="filters, near-duplicates and contamination, with a report")
    _io(p)
    p.add_argument("--eval", default="", help="evaluation prompt files to decontaminate against")
    p.add_argument("--removed", default="", help="write removed records here, each with removed_by")
    p.set_defaults(run=_run)
    p = sub.add_parser("dedup", help="exact and near-duplicate removal only")
    _io(p)
    p.set_defaults(run=_dedup)
    p = sub.add_parser("decontaminate", help="overlap with evaluation prompts, reported and removed")
    _io(p)
    p.add_argument("--eval", required=True, help="evaluation prompt files, comma-separated")
    p.add_argument("--keep", action="store_true", help="report the overlap but keep every record")
    p.set_defaults(run=_decontaminate)
    p = sub.add_parser("select", help="stratified (quotas), longest-N, random-N or nested subsets")
    _io(p, "output .jsonl ({size} in the path for nested)", curate_options=False)
    p.add_argument("--method", required=True, help="stratified | longest | random | nested")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--quotas", default="table1", help="table1 (LIMA's Table 1) or source=count,...")
    p.add_argument("--sizes", default="1000,2000,4000,8000", help="nested subset sizes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_select)
    p = sub.add_parser("influence", help="LESS-style gradient-similarity selection toward a target set")
    _io(p, curate_options=False)
    from lima_jax.curate.influence_cli import add_influence_arguments
    add_influence_arguments(p)
    p.set_defaults(run=_influence)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)

    def command():
        unknown = [a for a in rest if not a.startswith("--config.")]
        if unknown:
            raise DataError(unknown[0], "unknown argument", "see python -m lima_jax.curate --help", "config")
        _refuse_overwriting_inputs(args)
        args.run(args, rest)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
