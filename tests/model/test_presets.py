"""Presets: parameter counts against the published figures, computed from shapes
alone, and the `python -m lima_jax.model` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lima_jax.model import PRESETS, count_parameters
from lima_jax.model import __main__ as model_cli

PUBLISHED = {
    "llama1-7b": 6.74e9, "llama1-13b": 13.0e9, "llama1-33b": 32.5e9, "llama1-65b": 65.2e9,
    "llama2-7b": 6.74e9, "llama2-13b": 13.0e9, "llama2-70b": 69.0e9,
    "llama3-8b": 8.03e9, "llama3-70b": 70.6e9, "llama3.1-8b": 8.03e9, "llama3.1-70b": 70.6e9,
    "llama3.2-1b": 1.24e9, "llama3.2-3b": 3.21e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_within_one_percent_of_published(name):
    count = count_parameters(PRESETS[name].config)
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.01, f"{name}: {count:,}"


def test_every_family_is_present():
    for name in ["llama1-7b", "llama1-13b", "llama1-33b", "llama1-65b", "llama2-7b", "llama2-13b",
                 "llama2-70b", "llama3-8b", "llama3-70b", "llama3.2-1b", "llama3.2-3b", "tiny"]:
        assert name in PRESETS
    assert PRESETS["llama2-70b"].config.n_kv_heads == 8
    assert PRESETS["llama3.2-1b"].config.tie_embeddings
    assert PRESETS["llama3.1-8b"].config.rope_scaling.kind == "llama3"


def test_vocab_padding_is_counted_only_when_asked():
    config = PRESETS["tiny"].config.replace(vocab_size=250)
    assert count_parameters(config, include_vocab_padding=True) - count_parameters(config) == 6 * 64 * 2


def test_cli_prints_shapes_and_count(capsys):
    assert model_cli.main(["--preset", "llama1-65b"]) == 0
    out = capsys.readouterr().out
    assert "layers.attention.wq" in out and "(80, 8192, 64, 128)" in out
    assert "parameters: 65,285,660,672 = 65.286B (published 65.20B)" in out


def test_cli_rejects_an_unknown_preset(capsys):
    assert model_cli.main(["--preset", "llama9-1t"]) == 2
    assert "unknown preset 'llama9-1t'" in capsys.readouterr().err


def test_cli_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "lima_jax.model", "--preset", "llama3-8b"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "parameters: 8,030,261,248" in result.stdout
