"""`python -m lima_jax.convert`: Hugging Face <-> lima_jax checkpoints, and llama2.c files in.

    python -m lima_jax.convert hf-to-lima --hf DIR --out CKPT [--dtype bfloat16] [--add-eot]
    python -m lima_jax.convert lima-to-hf --ckpt CKPT --out DIR [--dtype bfloat16]
    python -m lima_jax.convert lima-to-peft --ckpt WORKDIR --out DIR [--dtype bfloat16]
    python -m lima_jax.convert llama2c-to-hf --bin stories15M.bin --tokenizer tokenizer.model --out DIR

Both HF directions move one tensor at a time, so converting a 65B checkpoint needs
memory for the model once, not twice. The tokenizer travels too: ``hf-to-lima`` keeps all the
source's tokenizer files beside the model (tokenizer.json or tokenizer.model, tokenizer_config.json,
special_tokens_map.json, chat_template.jinja), and ``lima-to-hf`` writes the checkpoint's tokenizer
so that ``transformers.AutoTokenizer`` encodes as lima_jax does, LIMA's new EOT registered as the
special token ``<EOT>``, and names the end of turn first in ``eos_token_id`` so that ``generate``
stops where lima_jax stops (`lima_jax.data.tokenizer_export`). A llama2.c checkpoint (karpathy/llama2.c's
`stories*.bin`, float32 formats v0 and v1, read by `lima_jax.model.llama2c`) becomes a
Hugging Face directory, which `from_hf`, training (`model.init_from`) and decoding then
read like any other. ``lima-to-peft`` writes a LoRA run's adapters (and new token rows) unmerged, as
a PEFT adapter directory for the run's base (`lima_jax.model.peft`; ``lima-to-hf`` writes the same
run merged), with the run's tokenizer beside them.

``--out`` is written only when it is new, empty, or already what the command writes (a lima_jax
model checkpoint for ``hf-to-lima``, a PEFT adapter directory for ``lima-to-peft``, a Hugging Face
model directory for the others), which is replaced; any other folder, or a file, stops the command
before anything is read or written, with one line naming it (`check_out_dir`).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

import jax
from flax import nnx

from lima_jax.checkpoint import (
    HF,
    HF_CONFIG_FILE,
    MODEL,
    MODEL_CONFIG_FILE,
    PARAMS_DIR,
    SNAPSHOT,
    TRAIN_STEP,
    WORKDIR,
    check_finite,
    checkpoint_kind,
    load_model,
    model_tokenizer,
    read_snapshot_meta,
    read_snapshot_params,
    read_train_meta,
    read_train_params,
    save_model,
)
from lima_jax.cli import run_command, setup_logging
from lima_jax.data.errors import DataError
from lima_jax.data.tokenizer import Tokenizer, read_tokenizer_files, tokenizer_file_in
from lima_jax.data.tokenizer_export import export_files, export_tokenizer, hf_token_ids, remove_tokenizer_files
from lima_jax.decode.load import load_for_decoding, read_run_checkpoint
from lima_jax.errors import InputError
from lima_jax.model import lora as lora_lib
from lima_jax.model.config import LlamaConfig
from lima_jax.model.hf import NUMPY_DTYPES, SAFETENSORS_FILE, SAFETENSORS_INDEX, from_hf, to_hf
from lima_jax.model.llama import abstract_model, count_parameters
from lima_jax.model.llama2c import llama2c_to_hf
from lima_jax.model.peft import is_adapter_dir, write_peft

log = logging.getLogger("lima_jax.convert")


PEFT = "peft"  # a PEFT adapter directory, lima-to-peft's --out
# What each kind of --out must already be for a conversion to replace it.
OUT_KINDS = {MODEL: "a lima_jax model checkpoint (model_config.json + params/)",
             HF: "a Hugging Face model directory (config.json + safetensors)",
             PEFT: "a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)"}


def _is_of_kind(folder: pathlib.Path, kind: str) -> bool:
    if kind == PEFT:
        return is_adapter_dir(folder)
    if kind == MODEL:
        return (folder / MODEL_CONFIG_FILE).is_file() and (folder / PARAMS_DIR).is_dir()
    # config.json alone is no proof: a training workdir holds one too.
    weights = [SAFETENSORS_FILE, SAFETENSORS_INDEX, "model-*-of-*.safetensors", "pytorch_model*.bin"]
    return (folder / HF_CONFIG_FILE).is_file() and any(any(folder.glob(w)) for w in weights)


def check_out_dir(out: str | os.PathLike, kind: str) -> pathlib.Path:
    """`out` as a folder a conversion may write: new, empty, or already of `kind` (MODEL, HF, PEFT),
    which the conversion replaces. Anything else, a file where a folder goes included, raises an
    InputError naming it, before anything is read or written."""
    out = pathlib.Path(out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker == out:
        raise InputError("is a file; --out names a folder", where=str(out))
    if blocker is not None:
        raise InputError(f"cannot be created: {blocker} is a file", where=str(out))
    if out.is_dir() and any(out.iterdir()) and not _is_of_kind(out, kind):
        raise InputError(f"is not empty and not {OUT_KINDS[kind]}", where=str(out),
                         hint="choose a new or empty folder; nothing was written")
    return out


def hf_to_lima(hf_dir: str, out: str, *, dtype: str = "float32", add_eot: bool = False) -> pathlib.Path:
    """Converts a Hugging Face LLaMA directory into a lima_jax model checkpoint, with all the
    tokenizer files the directory holds (one lima_jax cannot read travels as it is, with a warning)."""
    check_out_dir(out, MODEL)
    model = from_hf(hf_dir, dtype=dtype, add_eot=add_eot)
    tokenizer, unread = None, {}
    if tokenizer_file_in(hf_dir) is not None:
        try:
            tokenizer = Tokenizer.load(hf_dir)
        except DataError as err:
            log.warning("%s; its tokenizer files are copied as they are", err)
            unread = read_tokenizer_files(hf_dir)
    path = save_model(model, out, tokenizer=tokenizer)
    for name, data in unread.items():
        (path / name).write_bytes(data)
    log.info("wrote %s: %.3fB parameters, vocab %d (padded %d), eot %s%s", path,
             count_parameters(model.config) / 1e9, model.config.vocab_size,
             model.config.padded_vocab_size, model.config.eot_token_id,
             f", tokenizer: {', '.join(sorted(tokenizer.files))}" if tokenizer else "")
    return path


def _fit_tokenizer(tokenizer: Tokenizer, config: LlamaConfig, where: str) -> tuple[Tokenizer, bool]:
    """(the tokenizer with the model's end of turn, whether the model has one). A tokenizer whose
    ids the model cannot embed is an InputError naming `where`, before anything is written."""
    eot = config.eot_token_id
    if eot is not None and eot != tokenizer.eot_id:
        if eot == tokenizer.base_vocab_size:
            tokenizer = tokenizer.with_eot("new")
        elif eot < tokenizer.base_vocab_size:
            tokenizer = tokenizer.with_eot(tokenizer.id_to_piece(eot))
        else:
            raise InputError(f"the model's end-of-turn id {eot} lies past the tokenizer's {tokenizer.base_vocab_size} "
                             "ids and its new EOT", where=where, hint="the tokenizer is not the model's")
    with_eot = eot is not None
    needed = tokenizer.vocab_size if with_eot else tokenizer.base_vocab_size
    if needed > config.vocab_size:
        raise InputError(f"the tokenizer has {needed} ids, the model embeds {config.vocab_size}", where=where,
                         hint="the tokenizer is not the model's")
    return tokenizer, with_eot


def lima_to_hf(ckpt: str, out: str, *, dtype: str | None = None, max_shard_gb: float = 5.0) -> pathlib.Path:
    """Converts a lima_jax checkpoint into a Hugging Face LLaMA directory, its tokenizer with it.

    `ckpt` is a model checkpoint (`hf-to-lima`'s, whose tokenizer files are optional), a training
    step directory, or a training workdir (its latest step), as `python -m lima_jax.decode --ckpt`
    accepts. The tokenizer is written by `lima_jax.data.tokenizer_export` (AutoTokenizer encodes
    as lima_jax does; a new EOT is the special token ``<EOT>``), and config.json /
    generation_config.json name its bos, pad, unk ids and the end of turn first in eos.
    """
    check_out_dir(out, HF)
    path = pathlib.Path(ckpt)
    tokenizer, unread = None, {}
    if checkpoint_kind(path) == MODEL:
        model = load_model(path)
        try:
            tokenizer = model_tokenizer(path)
        except DataError as err:  # as hf-to-lima carried it: copied as it is
            log.warning("%s; its tokenizer files are copied as they are", err)
            unread = read_tokenizer_files(path)
    else:
        model, tokenizer = load_for_decoding(ckpt=str(path))  # a training run: params only
    files, token_ids = None, None
    if tokenizer is not None:  # prepared before anything is written: a misfit stops here
        tokenizer, with_eot = _fit_tokenizer(tokenizer, model.config, str(path))
        files, token_ids = export_files(tokenizer, with_eot=with_eot), hf_token_ids(tokenizer, with_eot=with_eot)
    path = to_hf(model, out, dtype=dtype, max_shard_bytes=int(max_shard_gb * 2**30), token_ids=token_ids)
    if tokenizer is not None:
        export_tokenizer(tokenizer, path, with_eot=with_eot, files=files)
    else:
        remove_tokenizer_files(path)  # an earlier export's, of another model
        for name, data in unread.items():
            (path / name).write_bytes(data)
        files = unread
    eos = token_ids["eos_token_id"] if token_ids else (
        model.config.eot_token_id if model.config.eot_token_id is not None else model.config.eos_token_id)
    log.info("wrote %s (vocab %d, eos %s%s)", path, model.config.vocab_size, eos,
             f", tokenizer: {', '.join(sorted(files))}" if files else ", no tokenizer")
    return path


def _read_adapters(step_dir: pathlib.Path) -> tuple[dict, LlamaConfig, dict]:
    """(adapters, model config, meta) of a LoRA run's step directory or snapshot: only the
    trainable params are read. A checkpoint without LoRA, or of a run with no base to apply its
    adapters to, is an InputError naming it, before any weight is read."""
    snapshot = checkpoint_kind(step_dir) == SNAPSHOT
    meta = (read_snapshot_meta if snapshot else read_train_meta)(step_dir)
    config = LlamaConfig.from_dict(meta["model_config"])
    if config.lora is None:
        raise InputError("holds a full fine-tune, not LoRA adapters", where=str(step_dir),
                         hint="export it with python -m lima_jax.convert lima-to-hf")
    if not meta.get("config", {}).get("model", {}).get("init_from"):
        raise InputError("the run has no model.init_from: its adapters sit on a randomly initialised "
                         "base that PEFT cannot load", where=str(step_dir),
                         hint="export the run merged with python -m lima_jax.convert lima-to-hf")
    abstract = lora_lib.trainable(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    read = read_snapshot_params if snapshot else read_train_params
    adapters = read(step_dir, abstract, jax.tree.map(lambda _: device, abstract))
    check_finite(adapters)
    return adapters, config, meta


def _reinitialised_rows(meta: dict, config: LlamaConfig) -> dict | None:
    """Rows a LoRA run re-initialised in its frozen base and did not train (tokens it needed that
    the base never trained, `lima_jax.train.base_weights.initial_params`; runs since the rows
    train beside the adapters have none left), as `write_peft`'s base_rows: PEFT's copy of the
    base lacks them. None when there are none, or when the base is not there to read."""
    from lima_jax.train.base_weights import LORA_BASE_META, reinitialised_rows

    needed = [int(i) for i in meta.get(LORA_BASE_META, {}).get("needed_ids", ()) if i not in config.lora.token_ids]
    base = pathlib.Path(meta["config"]["model"]["init_from"])
    if not needed:
        return None
    if checkpoint_kind(base) not in (HF, MODEL):
        log.warning("the run's base %s is not there: rows it may have re-initialised in it are not "
                    "exported", base)
        return None
    rows = reinitialised_rows(base, config, needed)
    if rows:
        log.warning("the run re-initialised the untrained rows of token ids %s in its frozen base: exported as "
                    "PEFT trainable tokens beside the adapters", rows["ids"])
    return rows


def lima_to_peft(ckpt: str, out: str, *, dtype: str | None = None) -> pathlib.Path:
    """Writes a LoRA run's adapters as a PEFT adapter directory for its base (`lima_jax.model.peft`),
    its tokenizer beside them (a new EOT registered as ``<EOT>``, as ``lima-to-hf`` writes it).

    `ckpt`: a training step directory, a selection snapshot, or a workdir (its newest step that
    restores). A model checkpoint or Hugging Face directory holds merged weights, not adapters: an
    InputError says to use ``lima-to-hf``. dtype: of the tensors (float32 by default)."""
    check_out_dir(out, PEFT)
    path = pathlib.Path(ckpt)
    kind = checkpoint_kind(path)
    if kind in (MODEL, HF):
        raise InputError("is a model checkpoint (merged weights), not a LoRA training run", where=str(path),
                         hint="export it with python -m lima_jax.convert lima-to-hf")
    if kind not in (TRAIN_STEP, SNAPSHOT, WORKDIR):
        raise InputError("is neither a training step directory (state/, meta/) nor a selection snapshot "
                         "(params/, meta/) nor a workdir with checkpoints/<step>/ or snapshots/<step>/",
                         where=str(path))
    adapters, config, meta = read_run_checkpoint(path.absolute(), kind, _read_adapters)
    base = meta["config"]["model"]["init_from"]
    if checkpoint_kind(base) == MODEL:
        log.warning("the run's base %s is a lima_jax checkpoint: convert it with lima-to-hf and point "
                    "base_model_name_or_path in %s/adapter_config.json at the result", base, out)
    tokenizer = Tokenizer.from_meta(meta)
    tokenizer, with_eot = _fit_tokenizer(tokenizer, config, str(path))
    files = export_files(tokenizer, with_eot=with_eot)  # prepared first: a misfit stops here
    out_path = write_peft(adapters, config, out, base_model=base, dtype=dtype,
                          base_rows=_reinitialised_rows(meta, config))
    export_tokenizer(tokenizer, out_path, with_eot=with_eot, files=files)
    log.info("wrote %s: rank %d adapters on %s for %s%s", out_path, config.lora.rank,
             ", ".join(config.lora.targets), base,
             f", trainable tokens {list(config.lora.token_ids)}" if config.lora.token_ids else "")
    return out_path


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
    to_hf_cmd.add_argument("--ckpt", required=True,
                           help="model checkpoint, training step directory, or training workdir")
    to_hf_cmd.add_argument("--out", required=True, help="Hugging Face directory to write")
    to_hf_cmd.add_argument("--dtype", default=None, choices=sorted(NUMPY_DTYPES),
                           help="tensor dtype to write (default: the checkpoint's)")
    to_hf_cmd.add_argument("--max-shard-gb", type=float, default=5.0)
    to_peft = commands.add_parser("lima-to-peft", help="LoRA training run -> PEFT adapter directory")
    to_peft.add_argument("--ckpt", required=True,
                         help="training workdir, step directory or selection snapshot of a LoRA run")
    to_peft.add_argument("--out", required=True, help="PEFT adapter directory to write")
    to_peft.add_argument("--dtype", default=None, choices=sorted(NUMPY_DTYPES),
                         help="tensor dtype to write (default: float32)")
    from_c = commands.add_parser("llama2c-to-hf", help="llama2.c stories*.bin -> Hugging Face directory")
    from_c.add_argument("--bin", required=True, help="llama2.c checkpoint (float32, v0 or v1)")
    from_c.add_argument("--tokenizer", default=None,
                        help="SentencePiece tokenizer.model the model was trained with (copied)")
    from_c.add_argument("--out", required=True, help="Hugging Face directory to write")
    args = parser.parse_args(argv)
    setup_logging(fmt="%(message)s")
    return run_command(_run, args)


def _run(args: argparse.Namespace) -> int:
    if args.command == "hf-to-lima":
        hf_to_lima(args.hf, args.out, dtype=args.dtype, add_eot=args.add_eot)
    elif args.command == "llama2c-to-hf":
        check_out_dir(args.out, HF)
        llama2c_to_hf(args.bin, args.out, tokenizer_model=args.tokenizer)
    elif args.command == "lima-to-peft":
        lima_to_peft(args.ckpt, args.out, dtype=args.dtype)
    else:
        lima_to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_gb=args.max_shard_gb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
