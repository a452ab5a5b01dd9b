"""The ``influence`` subcommand: tokenizer and model set-up around influence.select_by_influence.

The model starts from a lima_jax checkpoint (``--init-from``, what ``python -m lima_jax.convert``
writes) or from a preset at random initialisation (useful only for tests and demos), is warmed up
briefly on the pool, and scores the pool against the target set. Kept apart from __main__.py so
the other subcommands never import jax.
"""

from __future__ import annotations

import argparse

from lima_jax.data.errors import DataError
from lima_jax.jsonl import write_json


def add_influence_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the target set (a few examples of what you want)")
    p.add_argument("--n", type=int, required=True, help="how many pool records to select")
    p.add_argument("--tokenizer", default="", help="SentencePiece tokenizer.model")
    p.add_argument("--train-tokenizer-vocab", type=int, default=0,
                   help="train a tokenizer of this size on pool + target instead (cached in --workdir)")
    p.add_argument("--workdir", default="/tmp/lima_curate_influence", help="where a trained tokenizer goes")
    p.add_argument("--preset", default="tiny", help="model preset when there is no --init-from")
    p.add_argument("--init-from", default="", help="a lima_jax checkpoint directory")
    p.add_argument("--max-len", type=int, default=256, help="tokens per example (longer ones are trimmed)")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--learning-rate", type=float, default=1e-3, help="warm-up AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dim", type=int, default=128, help="random projection size")
    p.add_argument("--param-filter", default="", help="regex on parameter paths ('' = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", default="", help="write every pool record's score here (.json)")


def run_influence(args: argparse.Namespace) -> None:
    import collections

    from lima_jax.curate import records as records_lib
    from lima_jax.data.tokenizer import Tokenizer, train_tokenizer

    if not args.tokenizer and args.train_tokenizer_vocab <= 0:
        raise DataError("--tokenizer", "no tokenizer given", "pass --tokenizer or --train-tokenizer-vocab", "config")
    pool = records_lib.read_records(args.data, args.format)
    target = records_lib.read_records(args.target, args.format)
    if args.tokenizer:
        tokenizer = Tokenizer.load(args.tokenizer)
    else:
        texts = [t for r in [*pool, *target] for t in (*r.history, r.prompt, r.response)]
        tokenizer = Tokenizer.load(train_tokenizer(texts, args.workdir, args.train_tokenizer_vocab))

    # jax and the model only once the inputs are known to be good.
    import jax
    import optax
    from flax import nnx

    from lima_jax.curate.influence import select_by_influence
    from lima_jax.model.presets import get_preset
    from lima_jax.train.step import StepFunctions

    ids = {"vocab_size": tokenizer.vocab_size, "eot_token_id": tokenizer.eot_id,
           "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    if args.init_from:
        from lima_jax.checkpoint import load_model

        model = load_model(args.init_from)
        model_config = model.config
        if model_config.vocab_size != tokenizer.vocab_size:
            raise DataError("--init-from", f"the checkpoint has {model_config.vocab_size} ids, the tokenizer "
                            f"{tokenizer.vocab_size} (with EOT)", "use the checkpoint's own tokenizer", "config")
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    else:
        try:
            model_config = get_preset(args.preset, **ids, max_seq_len=max(args.max_len, 2))
        except KeyError as e:
            raise DataError("--preset", str(e), "", "config") from None
        fns = StepFunctions(model_config, optax.identity(), optax.constant_schedule(0.0))
        params = fns.init_params(jax.random.key(args.seed))
    try:
        result = select_by_influence(
            pool, target, args.n, tokenizer=tokenizer, model_config=model_config, params=params,
            max_len=args.max_len, warmup_steps=args.warmup_steps, batch_size=args.batch_size,
            learning_rate=args.learning_rate, dim=args.dim, param_filter=args.param_filter, seed=args.seed)
    except ValueError as e:
        raise DataError("influence", str(e), "", "config") from None
    chosen = [pool[i] for i in result.selected]
    records_lib.write_records(args.out, chosen, args.output_format)
    if args.scores:
        write_json(args.scores, [{"id": r.id, "source": r.source, "score": round(float(s), 6)}
                                 for r, s in zip(pool, result.scores, strict=True)], indent=1, ensure_ascii=True)
    per_source = collections.Counter(r.source for r in chosen)
    print(f"influence: wrote {len(chosen):,} of {len(pool):,} records to {args.out} "
          f"(per source: {dict(per_source)})")
