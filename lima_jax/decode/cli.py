"""``python -m lima_jax.decode``: answers every prompt of a file with a KV-cache decoder.

    python -m lima_jax.decode (--ckpt DIR | --hf DIR) --prompts FILE.jsonl --out OUT.jsonl
        [--template lima|llama2|plain|raw|chat|urial] [--greedy | --temperature T --top-p P
        --top-k K --repetition-penalty R] [--max-new-tokens N] [--num-samples K]
        [--batch-size B] [--seed S] [--mesh tensor=-1]

Sampling defaults are LIMA's (top-p 0.9, temperature 0.7, repetition penalty 1.2 on generated
tokens, at most 2,048 new tokens). ``--greedy`` is argmax with no repetition penalty unless
``--repetition-penalty`` is given. Each output line holds ``id``, ``sample``, ``prompt``,
``text``, ``tokens`` (generated ids, without the stop id), ``num_tokens`` and ``stop_reason``
(``eot``, ``eos``, ``stop_string`` (URIAL), ``length``, ``context``, or ``prompt_too_long`` for
an empty answer to a prompt that fills the model's context). An answer stops at EOS and at the
template's end of turn (`lima_jax.decode.answer.stop_names`). ``--template chat`` lays the prompt
out with the tokenizer's own chat template (tokenizer_config.json's ``chat_template`` or
chat_template.jinja beside the tokenizer), rendered with ``add_generation_prompt=True`` as
transformers' ``apply_chat_template`` renders it, and stops at that template's end-of-turn token
(``<|eot_id|>``, ``<|im_end|>``, ``</s>``) or EOS. An existing OUT is resumed:
(id, sample) pairs already in it are skipped, and a last line an interrupted run cut short is
set aside in ``OUT.torn-<n>``; an OUT holding anything else (another JSON Lines file, a folder)
is refused with ``error: OUT:LINE: ...`` and left as it is. Rows are batched longest prompt first; each row's
sample depends only on (seed, id, sample), not on its batch. The work is
`lima_jax.decode.answer.answer_file`, which library code calls directly.
"""

from __future__ import annotations

import argparse

from lima_jax.cli import run_command
from lima_jax.decode.answer import answer_file
from lima_jax.decode.prompts import DECODE_TEMPLATES
from lima_jax.decode.sampling import SamplingConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lima_jax.decode", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="model checkpoint, training step directory or training workdir")
    source.add_argument("--hf", help="Hugging Face LLaMA directory")
    p.add_argument("--tokenizer", help="tokenizer.json, tokenizer.model or a tokenizer directory "
                   "(default: the checkpoint's)")
    p.add_argument("--prompts", required=True, help="JSON Lines prompt file")
    p.add_argument("--out", required=True, help="output JSON Lines (resumed when it exists)")
    p.add_argument("--template", default="lima", choices=DECODE_TEMPLATES,
                   help="prompt layout; chat: the tokenizer's own chat template")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_run, args)


def _run(args) -> int:
    answer_file(args.prompts, args.out, ckpt=args.ckpt, hf=args.hf, tokenizer=args.tokenizer,
                dtype=args.dtype, mesh=_parse_mesh(args.mesh), template=args.template,
                sampling=sampling_from_args(args), max_new_tokens=args.max_new_tokens,
                num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                limit=args.limit, progress=not args.quiet)
    return 0
