"""``python -m lima_jax.decode``: answers every prompt of a file with a KV-cache decoder.

    python -m lima_jax.decode (--ckpt DIR | --hf DIR) --prompts FILE.jsonl --out OUT.jsonl
        [--template lima|llama2|plain|raw|urial] [--greedy | --temperature T --top-p P
        --top-k K --repetition-penalty R] [--max-new-tokens N] [--num-samples K]
        [--batch-size B] [--seed S] [--mesh tensor=-1]

Sampling defaults are LIMA's (top-p 0.9, temperature 0.7, repetition penalty 1.2 on generated
tokens, at most 2,048 new tokens). ``--greedy`` is argmax with no repetition penalty unless
``--repetition-penalty`` is given. Each output line holds ``id``, ``sample``, ``prompt``,
``text``, ``tokens`` (generated ids, without the stop id), ``num_tokens`` and ``stop_reason``
(``eot``, ``eos``, ``stop_string`` (URIAL), ``length`` or ``context``). An existing OUT is
resumed: (id, sample) pairs already in it are skipped. Rows are batched longest prompt first;
each row's sample depends only on (seed, id, sample), not on its batch.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from lima_jax.cli import run_command
from lima_jax.decode.generate import Generator
from lima_jax.decode.prompts import (
    DECODE_TEMPLATES,
    cut_at_stop_strings,
    encode_for_template,
    read_prompts,
)
from lima_jax.decode.sampling import SamplingConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lima_jax.decode", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="model checkpoint, training step directory or training workdir")
    source.add_argument("--hf", help="Hugging Face LLaMA directory")
    p.add_argument("--tokenizer", help="SentencePiece tokenizer.model (default: the checkpoint's)")
    p.add_argument("--prompts", required=True, help="JSON Lines prompt file")
    p.add_argument("--out", required=True, help="output JSON Lines (resumed when it exists)")
    p.add_argument("--template", default="lima", choices=DECODE_TEMPLATES)
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="CTRL penalty on generated tokens (default 1.2; 1.0 with --greedy)")
    p.add_argument("--penalize-prompt", action="store_true",
                   help="apply the repetition penalty to prompt tokens too")
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (ablations: 5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (and parameter dtype for --hf); default: the checkpoint's")
    p.add_argument("--mesh", default="", help="shard over devices, e.g. 'tensor=-1' or "
                   "'data=2,tensor=4' (default: one device)")
    p.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    if args.greedy:
        return SamplingConfig.greedy_config(args.repetition_penalty or 1.0)
    penalty = 1.2 if args.repetition_penalty is None else args.repetition_penalty
    return SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          repetition_penalty=penalty, penalize_prompt=args.penalize_prompt)


def _parse_mesh(text: str):
    if not text:
        return None
    from lima_jax.sharding import make_mesh

    sizes = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --mesh {text!r}: expected AXIS=SIZE[,AXIS=SIZE]")
        sizes[key.strip()] = int(value)
    return make_mesh(sizes)


def done_rows(out: pathlib.Path) -> set[tuple[str, int]]:
    """(id, sample) pairs already in OUT; a torn last line (an interrupted write) is dropped."""
    if not out.exists():
        return set()
    good, done = [], set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            done.add((str(record["id"]), int(record["sample"])))
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    if len(good) != len(out.read_text(encoding="utf-8").splitlines()):
        out.write_text("".join(line + "\n" for line in good), encoding="utf-8")
    return done


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_run, args)


def _run(args) -> int:
    from lima_jax.decode.load import load_for_decoding  # heavy imports after --help

    for name in ("num_samples", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    sampling = sampling_from_args(args)
    prompts = read_prompts(args.prompts)
    if args.limit:
        prompts = prompts[: args.limit]
    mesh = _parse_mesh(args.mesh)
    model, tokenizer = load_for_decoding(ckpt=args.ckpt, hf=args.hf, tokenizer=args.tokenizer,
                                         dtype=args.dtype, add_eot=args.template in ("lima", "plain"),
                                         mesh=mesh)
    config = model.config
    stop_names = {tokenizer.eos_id: "eos"}
    if config.eot_token_id is not None:
        stop_names[config.eot_token_id] = "eot"
    elif args.template in ("lima", "plain"):
        print(f"decode: warning: the model has no EOT token; template {args.template} answers "
              "stop only at EOS or --max-new-tokens", file=sys.stderr)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_rows(out)
    encoded = {p.id: encode_for_template(p.text, tokenizer, args.template) for p in prompts}
    # A prompt that leaves no room to answer within the model's context gets an empty answer
    # with stop_reason 'prompt_too_long' (counted on stderr), so no prompt goes missing.
    too_long = {pid for pid, ids in encoded.items() if len(ids) >= config.max_seq_len}
    rows = [(p, s) for p in prompts for s in range(args.num_samples) if (p.id, s) not in done]
    if too_long:
        print(f"decode: {len(too_long)} prompt(s) have max_seq_len={config.max_seq_len} tokens or "
              f"more and get an empty answer (stop_reason prompt_too_long), e.g. "
              f"{sorted(too_long)[:3]}", file=sys.stderr)
        with out.open("a", encoding="utf-8") as f:
            for prompt, sample in rows:
                if prompt.id in too_long:
                    f.write(json.dumps({
                        "id": prompt.id, "sample": sample, "prompt": prompt.text, "text": "",
                        "tokens": [], "num_tokens": 0, "stop_reason": "prompt_too_long",
                    }, ensure_ascii=False) + "\n")
        rows = [(p, s) for p, s in rows if p.id not in too_long]
    rows.sort(key=lambda row: -len(encoded[row[0].id]))  # similar lengths share a batch
    generator = Generator(model, mesh=mesh)
    from tqdm import tqdm

    bar = tqdm(total=len(rows), unit="sample", disable=args.quiet, file=sys.stderr,
               initial=0, desc="decode")
    if done:
        bar.write(f"decode: resuming {out}: {len(done)} answers there, {len(rows)} to go")
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start:start + args.batch_size]
            # Full batches only (one compile per prompt bucket): repeat the last row as filler.
            filled = batch + [batch[-1]] * (args.batch_size - len(batch))
            results = generator.generate(
                [encoded[p.id] for p, _ in filled], sampling=sampling,
                max_new_tokens=args.max_new_tokens, stop_ids=list(stop_names), seed=args.seed,
                prompt_ids=[p.id for p, _ in filled], samples=[s for _, s in filled],
                stop_names=stop_names)
            for (prompt, sample), result in zip(batch, results):
                text, cut = cut_at_stop_strings(tokenizer.decode(result.tokens), args.template)
                f.write(json.dumps({
                    "id": prompt.id, "sample": sample, "prompt": prompt.text, "text": text,
                    "tokens": result.tokens, "num_tokens": len(result.tokens),
                    "stop_reason": "stop_string" if cut else result.stop_reason,
                }, ensure_ascii=False) + "\n")
            f.flush()
            new_tokens = sum(len(r.tokens) for r in results[: len(batch)])
            bar.set_postfix(tok_s=f"{new_tokens / max(generator.timing.decode_s, 1e-9):.0f}")
            bar.update(len(batch))
    bar.close()
    return 0
