"""`python -m lima_jax.model --preset NAME`: print a preset's shape and parameter count.

Counts come from shapes (`jax.eval_shape`), so even a 70B preset prints in seconds
on a laptop.
"""

from __future__ import annotations

import argparse
import sys

import jax
from flax import nnx

from lima_jax.model.llama import abstract_model, count_parameters
from lima_jax.model.presets import PRESETS


def describe(name: str) -> str:
    preset = PRESETS[name]
    config = preset.config
    lines = [f"{name}: {preset.description}"]
    lines.append(
        f"  L={config.n_layers} D={config.dim} N={config.n_heads} K={config.n_kv_heads} "
        f"H={config.head_dim} F={config.mlp_dim} V={config.vocab_size} "
        f"(padded {config.padded_vocab_size}) tied={config.tie_embeddings} "
        f"rope_theta={config.rope_theta:g} rope_scaling={config.rope_scaling}"
    )
    state = nnx.state(abstract_model(config), nnx.Param)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        key = ".".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
        key = key.removesuffix(".value")
        lines.append(f"  {key:40s} {str(tuple(leaf.shape)):28s} {leaf.dtype}")
    count = count_parameters(config)
    published = (
        f" (published {preset.published_params / 1e9:.2f}B)" if preset.published_params else ""
    )
    lines.append(f"  parameters: {count:,} = {count / 1e9:.3f}B{published}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lima_jax.model", description=__doc__)
    parser.add_argument("--preset", action="append", help="preset name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the presets")
    args = parser.parse_args(argv)
    if args.list or not args.preset:
        for name, preset in PRESETS.items():
            print(f"{name:14s} {preset.description}")
        return 0
    for name in args.preset:
        if name not in PRESETS:
            print(f"error: unknown preset {name!r}; known: {', '.join(PRESETS)}", file=sys.stderr)
            return 2
        print(describe(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
