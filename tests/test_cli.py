"""lima_jax.cli: the one config loader (files, ConfigDicts, overrides) and the one error handler."""

from __future__ import annotations

import pathlib

import ml_collections
import pytest

from lima_jax.cli import config_command, load_config, run_command
from lima_jax.errors import InputError, LimaError
from lima_jax.train.config import get_base_config

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.py")


def test_overrides_are_parsed_by_type_from_a_file_and_a_configdict():
    config = load_config(DEMO, ["train.max_steps=7", "--config.optimizer.learning_rate=2e-5",
                                "data.pack=False"])
    assert (config.train.max_steps, config.optimizer.learning_rate, config.data.pack) == (7, 2e-5, False)
    base = get_base_config()
    changed = load_config(base, ["model.preset=tiny"])
    assert changed.model.preset == "tiny" and base.model.preset != "tiny"  # the source is not touched


def test_a_file_with_an_argument():
    config = load_config(str(REPO / "configs" / "ablations" / "tiny.py") + ":condition", ["workdir=/tmp/x"])
    assert config.workdir == "/tmp/x"


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rat=1e-4", r"config\.optimizer\.learning_rat: no such key \(did you mean 'learning_rate'"),
    ("model.preset.size=1", r"config\.model\.preset\.size: no such key \(it is not a section\)"),
    ("train.max_steps=many", r"train\.max_steps=many: invalid literal for int"),
])
def test_a_bad_override_is_one_error_naming_the_key(override, message):
    with pytest.raises(LimaError, match=message):
        load_config(DEMO, [override])


def test_a_missing_or_broken_config_file(tmp_path):
    with pytest.raises(LimaError, match="absent.py: no such config file"):
        load_config(str(tmp_path / "absent.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(LimaError, match="broken.py: cannot load the config"):
        load_config(str(broken))


def test_run_command_turns_errors_into_one_line_and_an_exit_code(capsys):
    def fails():
        raise InputError("must be >= 1", where="--num-samples")

    assert run_command(fails) == 2
    assert capsys.readouterr().err == "error: --num-samples: must be >= 1\n"
    assert run_command(lambda: None) == 0


def test_config_command_help_and_bad_flags(capsys):
    seen = []

    def main(config: ml_collections.ConfigDict) -> int:
        seen.append(config.train.max_steps)
        return 0

    for argv, code in ((["--help"], 0), (["--config", DEMO, "--config.nope=1"], 2), ([], 2),
                       (["--config", DEMO, "--stray"], 2), (["--config", DEMO, "--config.train.max_steps", "3"], 0)):
        with pytest.raises(SystemExit) as exit_:
            config_command(main, "a run config", argv, usage="the command")
        assert exit_.value.code == code, argv
    assert seen == [3]
    err = capsys.readouterr().err
    assert "error: config.nope: no such key" in err and "--config FILE is required" in err
    assert "Traceback" not in err
