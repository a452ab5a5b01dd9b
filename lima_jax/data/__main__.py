"""Command line for the data package.

  python -m lima_jax.data report --data FILE [--format F] --tokenizer MODEL [--template lima]
      [--max-len 2048] [--json] [--plot OUT.png] [--on-error skip]
  python -m lima_jax.data steps --data FILE --tokenizer MODEL [--epochs 15] [--batch-size 32]
      [--pack] [--packing best_fit]
  python -m lima_jax.data check-template --tokenizer DIR --template chat [--data FILE] [--eot auto]

--tokenizer takes a tokenizer.json, a tokenizer.model (SentencePiece or Llama 3's) or a checkpoint
directory. check-template prints one example with its trained spans in ⟦ ⟧ and exits 1 when the
setup would train something decoding or an export does not serve (`lima_jax.data.check_template`).

A data problem prints ``error: file:line: what (what to do)`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from lima_jax.cli import run_command
from lima_jax.data.config import get_default_data_config


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data file(s), comma-separated, or tfds:lima/train")
    parser.add_argument("--format", default="auto", help="auto | lima | alpaca | fastchat | openai")
    parser.add_argument("--tokenizer", default="",
                        help="tokenizer.json, tokenizer.model or a checkpoint directory")
    parser.add_argument("--train-tokenizer-vocab", type=int, default=0,
                        help="train a tokenizer of this size on the data instead (cached in --workdir)")
    parser.add_argument("--workdir", default="", help="where a trained tokenizer is cached")
    parser.add_argument("--template", default="lima", help="lima | llama2 | plain | raw | chat")
    parser.add_argument("--eot", default="auto", help="auto | new | a token's text (<|eot_id|>)")
    parser.add_argument("--loss-on", default="assistant", help="assistant | all")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--on-error", default="raise", help="raise | skip (count and list bad records)")
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
    parser.add_argument("--tfds-data-dir", default="")
    parser.add_argument("--tfds-manual-dir", default="")


def _config(args: argparse.Namespace):
    c = get_default_data_config()
    c.path, c.format, c.tokenizer = args.data, args.format, args.tokenizer
    c.train_tokenizer.vocab_size = args.train_tokenizer_vocab
    c.template, c.loss_on, c.max_len, c.eot = args.template, args.loss_on, args.max_len, args.eot
    c.on_error, c.worker_count = args.on_error, args.workers
    c.tfds_data_dir, c.tfds_manual_dir = args.tfds_data_dir, args.tfds_manual_dir
    c.process_index, c.process_count = 0, 1
    return c


def _report(args: argparse.Namespace) -> None:
    from lima_jax.data import report
    from lima_jax.data.pipeline import prepare_examples

    config = _config(args)
    tokenizer, examples, skips = prepare_examples(config, workdir=args.workdir or None)
    result = report.build_report(examples, skips, tokenizer, config)
    if args.plot:
        report.plot_lengths(examples, config.max_len, args.plot)
        result["plot"] = args.plot
    print(json.dumps(result, indent=2) if args.json else report.format_report(result))


def _steps(args: argparse.Namespace) -> None:
    from lima_jax.data.pipeline import build_pipeline

    config = _config(args)
    config.num_epochs, config.global_batch_size = args.epochs, args.batch_size
    config.pack, config.packing, config.seed = args.pack, args.packing, args.seed
    pipeline = build_pipeline(config, workdir=args.workdir or None)
    print(pipeline.summary())


def _check_template(args: argparse.Namespace) -> int:
    from lima_jax.data.check_template import PROBES, TRAINED_CLOSE, TRAINED_OPEN, check_setup
    from lima_jax.data.eot import apply_eot_policy
    from lima_jax.data.readers import read_conversations
    from lima_jax.data.templates import check_template
    from lima_jax.data.tokenizer import Tokenizer

    check_template(args.template, args.loss_on)
    tokenizer = apply_eot_policy(Tokenizer.load(args.tokenizer), args.eot, args.template)
    conversations = PROBES
    if args.data:
        read = read_conversations(args.data, args.format, args.on_error)
        conversations = [c.turns for c in read.conversations]
    result = check_setup(tokenizer, args.template, conversations, args.loss_on, limit=args.limit)
    print(f"tokenizer: {tokenizer}")
    print(f"template {args.template}, end of turn {tokenizer.id_to_piece(tokenizer.eot_id)!r} "
          f"(id {tokenizer.eot_id}); {result.conversations} conversation(s) checked")
    print(f"example (trained tokens in {TRAINED_OPEN} {TRAINED_CLOSE}):\n{result.example}")
    for problem in result.problems:
        print(f"check-template: FAILED {problem}", file=sys.stderr)
    if result.ok:
        print("check-template: ok")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lima_jax.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="statistics of a data set under a template (Table 1)")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default="", help="write a histogram of lengths per source here (.png)")
    p.set_defaults(run=_report)
    p = sub.add_parser("steps", help="the exact number of steps of a run, and its plan")
    _common(p)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pack", action="store_true")
    p.add_argument("--packing", default="best_fit")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_steps)
    p = sub.add_parser("check-template", help="does training train what decoding and an export serve?")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer.json, tokenizer.model or a checkpoint directory")
    p.add_argument("--template", default="lima", help="lima | llama2 | plain | raw | chat")
    p.add_argument("--eot", default="auto", help="auto | new | a token's text (<|eot_id|>)")
    p.add_argument("--data", default="", help="conversations to check (default: three probes)")
    p.add_argument("--format", default="auto", help="auto | lima | alpaca | fastchat | openai")
    p.add_argument("--on-error", default="raise", help="raise | skip")
    p.add_argument("--loss-on", default="assistant", help="assistant | all")
    p.add_argument("--limit", type=int, default=0, help="check only the first N conversations (0 = all)")
    p.set_defaults(run=_check_template)
    args = parser.parse_args(argv)
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
