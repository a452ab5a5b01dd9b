"""``python -m lima_jax.evaluate``: LIMA's evaluation from decode response files.

    evaluate pairwise --a A.jsonl --b B.jsonl --judge SPEC --out DIR [--a-name N --b-name N]
        [--sample 0] [--intersect]                 -> DIR/verdicts.jsonl, table.md, table.json, winrate.png
    evaluate score --responses R.jsonl [R2.jsonl ...] --judge SPEC --out DIR
                                                   -> DIR/scores.jsonl, scores.md, scores.json
    evaluate table --verdicts DIR_OR_FILE [...] --out DIR   (several studies -> one table + chart)
    evaluate agree --x VERDICTS --y VERDICTS       agreement and Cohen's kappa of two annotators
    evaluate annotate --a A.jsonl --b B.jsonl --out DIR [--port P] [--annotator NAME]
    evaluate select --workdir RUN --epochs 5-10 --dev FILE --judge SPEC [--out DIR]

Judge SPEC: ``openai:MODEL@BASE_URL`` (key from $OPENAI_API_KEY or --api-key-env NAME),
``local:PATH`` (a lima_jax checkpoint or Hugging Face directory) or ``length`` (a deterministic
stand-in for tests and dry runs that prefers longer answers; not a real judge). Judge replies are
cached in DIR/judge_cache.jsonl (or --cache FILE): a rerun costs nothing and an interrupted study
resumes. --timeout bounds a whole request; a failed request is retried (--retries, --backoff,
Retry-After up to --max-retry-after) and then counted while the study goes on; the exit status is
1 when any request failed for good (rerun to retry only those). API keys are redacted from every
stored reply and error (README, "Evaluation")."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from lima_jax.cli import run_command
from lima_jax.evaluate import pairwise, scale
from lima_jax.evaluate.agreement import agreement
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.judges import JudgeOptions, make_judge
from lima_jax.evaluate.responses import pair_responses, read_responses
from lima_jax.jsonl import read_json, write_json, write_jsonl, write_text_atomic


def _judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", required=True, help="openai:MODEL@BASE_URL | local:PATH | length (test only)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds for a whole request: connect, send and the full reply (> 0)")
    p.add_argument("--retries", type=int, default=6,
                   help="retries (>= 0) on 429, 5xx, timeouts, connection and protocol failures, bad bodies")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    p.add_argument("--max-retry-after", type=float, default=60.0,
                   help="longest wait before a retry in seconds: caps Retry-After and the backoff")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    p.add_argument("--max-tokens", type=int, default=512, help="judge reply length limit")
    p.add_argument("--tokenizer", help="local judges: tokenizer.model (default: the checkpoint's)")
    p.add_argument("--judge-template", default="lima", help="local judges: chat template (lima, llama2, ...)")
    p.add_argument("--cache", help="reply cache JSONL (default: OUT/judge_cache.jsonl)")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lima_jax.evaluate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pw = sub.add_parser("pairwise", help="A vs B preference, judged in both orders")
    pw.add_argument("--a", required=True)
    pw.add_argument("--b", required=True)
    pw.add_argument("--a-name")
    pw.add_argument("--b-name")
    pw.add_argument("--sample", type=int, default=0, help="which sample of each prompt to compare")
    pw.add_argument("--intersect", action="store_true", help="judge only ids in both files (count the rest)")
    pw.add_argument("--out", required=True)
    _judge_args(pw)
    sc = sub.add_parser("score", help="1-6 helpfulness scale, mean and 95%% CI per system")
    sc.add_argument("--responses", required=True, nargs="+")
    sc.add_argument("--out", required=True)
    _judge_args(sc)
    tb = sub.add_parser("table", help="one table and chart from several pairwise or annotation studies")
    tb.add_argument("--verdicts", required=True, nargs="+", help="verdicts.jsonl files or their directories")
    tb.add_argument("--out", required=True)
    tb.add_argument("--title")
    ag = sub.add_parser("agree", help="agreement and Cohen's kappa between two verdict files")
    ag.add_argument("--x", required=True)
    ag.add_argument("--y", required=True)
    an = sub.add_parser("annotate", help="serve the human annotation page")
    an.add_argument("--a", required=True)
    an.add_argument("--b", required=True)
    an.add_argument("--a-name")
    an.add_argument("--b-name")
    an.add_argument("--out", required=True)
    an.add_argument("--annotator", default="annotator")
    an.add_argument("--host", default="127.0.0.1")
    an.add_argument("--port", type=int, default=8765)
    an.add_argument("--seed", type=int, default=0, help="seeds the left/right order of each pair")
    se = sub.add_parser("select", help="pick the epoch checkpoint whose dev-set answers score best")
    se.add_argument("--workdir", required=True, help="a training run's workdir")
    se.add_argument("--epochs", default="5-10", help="epochs to compare, e.g. 5-10 (LIMA's range)")
    se.add_argument("--dev", required=True, help="dev prompts (any format python -m lima_jax.decode reads)")
    se.add_argument("--out", required=True)
    se.add_argument("--max-new-tokens", type=int, default=2048)
    se.add_argument("--template", default="lima")
    se.add_argument("--seed", type=int, default=0)
    _judge_args(se)
    return p


def _select(args) -> int:
    from lima_jax.evaluate.select import parse_epochs, select_checkpoint

    result = select_checkpoint(
        args.workdir, parse_epochs(args.epochs), args.dev, make_judge(args.judge, _options(args)),
        args.out, quiet=args.quiet, template=args.template, max_new_tokens=args.max_new_tokens,
        seed=args.seed)
    print(result["markdown"], end="")
    return 0 if result["best"] is not None else 1


def _options(args) -> JudgeOptions:
    """The judge settings of `args`; an InputError (one line, exit 2) for a value that cannot work."""
    return JudgeOptions(api_key_env=args.api_key_env, timeout=args.timeout, retries=args.retries,
                        backoff=args.backoff, max_retry_after=args.max_retry_after,
                        concurrency=args.concurrency, max_tokens=args.max_tokens,
                        tokenizer=args.tokenizer, template=args.judge_template)


def _cache(args, out: pathlib.Path) -> ReplyCache:
    return ReplyCache(args.cache or out / "judge_cache.jsonl")


def _pairwise(args) -> int:
    from lima_jax.evaluate.report import plot_win_rates

    a_name = args.a_name or pathlib.Path(args.a).stem
    b_name = args.b_name or pathlib.Path(args.b).stem
    pairs, missing = pair_responses(read_responses(args.a), read_responses(args.b), sample=args.sample,
                                    a_name=a_name, b_name=b_name, intersect=args.intersect)
    out = pathlib.Path(args.out)
    judge = make_judge(args.judge, _options(args))
    records = pairwise.run_pairwise(pairs, judge, _cache(args, out), quiet=args.quiet)
    table = pairwise.win_table(records, a_name=a_name, b_name=b_name)
    table.update(missing)
    pairwise.write_pairwise(out, records, table)
    if table["judged"]:
        plot_win_rates([table], out / "winrate.png")
    print(pairwise.table_markdown([table]), end="")
    _report_skips(table["skips"], missing)
    return 1 if table["skips"].get("judge_error") else 0


def _report_skips(skips: dict, missing: dict | None = None) -> None:
    parts = [f"{n} {why}" for why, n in sorted(skips.items())]
    parts += [f"{n} {why}" for why, n in sorted((missing or {}).items()) if n]
    if parts:
        print(f"evaluate: skipped: {', '.join(parts)} (details in the output JSONL)", file=sys.stderr)


def _score(args) -> int:
    out = pathlib.Path(args.out)
    judge = make_judge(args.judge, _options(args))
    cache = _cache(args, out)
    all_records, summaries = [], []
    for path in args.responses:
        system = pathlib.Path(path).stem
        records = scale.run_scale(list(read_responses(path).values()), judge, cache, quiet=args.quiet)
        for r in records:
            r["system"] = system
        all_records += records
        summaries.append(scale.scale_summary(records, system))
    write_jsonl(out / "scores.jsonl", all_records)
    write_text_atomic(out / "scores.md", scale.scale_markdown(summaries))
    write_json(out / "scores.json", summaries, ensure_ascii=True)
    print(scale.scale_markdown(summaries), end="")
    skips: dict[str, int] = {}
    for s in summaries:
        for why, n in s["skips"].items():
            skips[why] = skips.get(why, 0) + n
    _report_skips(skips)
    return 1 if skips.get("judge_error") else 0


def _verdict_file(path: str) -> pathlib.Path:
    p = pathlib.Path(path)
    return p / "verdicts.jsonl" if p.is_dir() else p


def _study_names(path: pathlib.Path) -> tuple[str, str]:
    meta = path.parent / "table.json"
    if meta.is_file():
        t = read_json(meta)
        return t["a"], t["b"]
    return "A", path.parent.name or "B"


def _table(args) -> int:
    from lima_jax.evaluate.report import plot_win_rates

    tables = []
    for path in map(_verdict_file, args.verdicts):
        a, b = _study_names(path)
        tables.append(pairwise.win_table(pairwise.read_verdicts(path), a_name=a, b_name=b))
    out = pathlib.Path(args.out)
    write_text_atomic(out / "table.md", pairwise.table_markdown(tables))
    write_json(out / "table.json", tables, ensure_ascii=True)
    plot_win_rates(tables, out / "winrate.png", title=args.title)
    print(pairwise.table_markdown(tables), end="")
    return 0


def _agree(args) -> int:
    x = {r["id"]: r["verdict"] for r in pairwise.read_verdicts(_verdict_file(args.x))}
    y = {r["id"]: r["verdict"] for r in pairwise.read_verdicts(_verdict_file(args.y))}
    result = agreement(x, y)
    print(json.dumps(result, indent=2))
    return 0


def _annotate(args) -> int:
    from lima_jax.evaluate.annotate import serve

    a_name = args.a_name or pathlib.Path(args.a).stem
    b_name = args.b_name or pathlib.Path(args.b).stem
    pairs, _ = pair_responses(read_responses(args.a), read_responses(args.b),
                              a_name=a_name, b_name=b_name)
    serve(pairs, pathlib.Path(args.out), a_name=a_name, b_name=b_name, annotator=args.annotator,
          host=args.host, port=args.port, seed=args.seed)
    return 0


COMMANDS = {"pairwise": _pairwise, "score": _score, "table": _table, "agree": _agree, "select": _select,
            "annotate": _annotate}


def _run(args) -> int:
    if hasattr(args, "judge"):
        _options(args)  # a bad --timeout / --retries stops here, before any file is read or written
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_run, args)
