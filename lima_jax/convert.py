"""`python -m lima_jax.convert`: Hugging Face <-> lima_jax checkpoints.

    python -m lima_jax.convert hf-to-lima --hf DIR --out CKPT [--dtype bfloat16] [--add-eot]
    python -m lima_jax.convert lima-to-hf --ckpt CKPT --out DIR [--dtype bfloat16]

Both directions move one tensor at a time, so converting a 65B checkpoint needs
memory for the model once, not twice.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from lima_jax.checkpoint import TOKENIZER_FILE, load_model, save_model
from lima_jax.model.config import ConfigError
from lima_jax.model.hf import NUMPY_DTYPES, CheckpointError, from_hf, to_hf
from lima_jax.model.llama import count_parameters

log = logging.getLogger("lima_jax.convert")


def hf_to_lima(hf_dir: str, out: str, *, dtype: str = "float32", add_eot: bool = False) -> pathlib.Path:
    """Converts a Hugging Face LLaMA directory into a lima_jax model checkpoint."""
    model = from_hf(hf_dir, dtype=dtype, add_eot=add_eot)
    tokenizer = pathlib.Path(hf_dir) / TOKENIZER_FILE
    path = save_model(model, out, tokenizer_model=tokenizer if tokenizer.is_file() else None)
    log.info("wrote %s: %.3fB parameters, vocab %d (padded %d), eot %s", path,
             count_parameters(model.config) / 1e9, model.config.vocab_size,
             model.config.padded_vocab_size, model.config.eot_token_id)
    return path


def lima_to_hf(ckpt: str, out: str, *, dtype: str | None = None, max_shard_gb: float = 5.0) -> pathlib.Path:
    """Converts a lima_jax model checkpoint into a Hugging Face LLaMA directory."""
    model = load_model(ckpt)
    tokenizer = pathlib.Path(ckpt) / TOKENIZER_FILE
    path = to_hf(model, out, dtype=dtype, max_shard_bytes=int(max_shard_gb * 2**30),
                 tokenizer_model=tokenizer if tokenizer.is_file() else None)
    log.info("wrote %s (vocab %d, eos %s)", path, model.config.vocab_size,
             model.config.eot_token_id if model.config.eot_token_id is not None
             else model.config.eos_token_id)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lima_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_lima = commands.add_parser("hf-to-lima", help="Hugging Face directory -> orbax checkpoint")
    to_lima.add_argument("--hf", required=True, help="directory with config.json and safetensors")
    to_lima.add_argument("--out", required=True, help="checkpoint directory to write")
    to_lima.add_argument("--dtype", default="float32", choices=sorted(NUMPY_DTYPES))
    to_lima.add_argument("--add-eot", action="store_true",
                         help="append LIMA's end-of-turn token (id = vocab size)")
    to_hf_cmd = commands.add_parser("lima-to-hf", help="orbax checkpoint -> Hugging Face directory")
    to_hf_cmd.add_argument("--ckpt", required=True, help="checkpoint directory")
    to_hf_cmd.add_argument("--out", required=True, help="Hugging Face directory to write")
    to_hf_cmd.add_argument("--dtype", default=None, choices=sorted(NUMPY_DTYPES),
                           help="tensor dtype to write (default: the checkpoint's)")
    to_hf_cmd.add_argument("--max-shard-gb", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "hf-to-lima":
            hf_to_lima(args.hf, args.out, dtype=args.dtype, add_eot=args.add_eot)
        else:
            lima_to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_gb=args.max_shard_gb)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
