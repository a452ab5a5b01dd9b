"""The end-of-turn policy (config.data.eot) and the train-equals-serve check (check-template)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lima_jax.data.check_template import PROBES, check_setup
from lima_jax.data.eot import apply_eot_policy
from lima_jax.data.errors import DataError
from lima_jax.data.tokenizer import Tokenizer
from tests.helpers.tokenizer_fixtures import CHATML_TEMPLATE, byte_bpe_dir


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory):
    return byte_bpe_dir(tmp_path_factory.mktemp("chatml"), "chatml")


def test_auto_is_a_new_eot_for_lima_and_the_templates_own_for_chat(chatml_dir):
    tok = Tokenizer.load(chatml_dir)
    lima = apply_eot_policy(tok, "auto", "lima")
    assert lima.eot_is_new and lima.eot_id == tok.base_vocab_size and lima.vocab_size == tok.base_vocab_size + 1
    chat = apply_eot_policy(tok, "auto", "chat")
    assert not chat.eot_is_new and chat.eot_id == tok.piece_to_id("<|im_end|>")
    assert chat.vocab_size == tok.base_vocab_size  # no new row


def test_a_vocabulary_token_is_reused_as_end_of_turn_under_lima(chatml_dir):
    from lima_jax.data.templates import encode_conversations

    tok = apply_eot_policy(Tokenizer.load(chatml_dir), "<|im_end|>", "lima")
    im_end = tok.piece_to_id("<|im_end|>")
    (enc,) = encode_conversations([PROBES[0]], tok, template="lima")
    assert enc.ids[-1] == im_end and enc.trained[-1]
    assert tok.vocab_size == tok.base_vocab_size


def test_bad_eot_values_name_the_key(chatml_dir):
    tok = Tokenizer.load(chatml_dir)
    with pytest.raises(DataError, match=r"config.data.eot.*not one token"):
        apply_eot_policy(tok, "<|nope|>", "lima")
    with pytest.raises(DataError, match=r"config.data.eot.*not the end of turn of the chat template"):
        apply_eot_policy(tok, "<|endoftext|>", "chat")


@pytest.mark.parametrize("template", ["lima", "plain", "llama2", "chat"])
def test_the_shipped_setups_pass_the_check(chatml_dir, template):
    tok = apply_eot_policy(Tokenizer.load(chatml_dir), "auto", template)
    result = check_setup(tok, template)
    assert result.ok, result.problems
    assert result.conversations == len(PROBES)
    assert "\u27e6" in result.example  # trained spans are marked


def test_llama3_tiktoken_with_its_chat_template_passes(shared_data):
    tok = Tokenizer.load(shared_data / "tokenizer" / "llama3")
    result = check_setup(apply_eot_policy(tok, "auto", "chat"), "chat")
    assert result.ok, result.problems
    assert "<|eot_id|>" in result.example


def test_each_failed_check_is_named(chatml_dir, monkeypatch):
    import lima_jax.data.check_template as check

    tok = apply_eot_policy(Tokenizer.load(chatml_dir), "auto", "lima")
    tok.pad_id = tok.eos_id
    assert any(p.startswith("pad:") for p in check_setup(tok, "lima").problems)

    tok = apply_eot_policy(Tokenizer.load(chatml_dir), "auto", "lima")
    real = check.encode_conversations

    def untrained_eot(*args, **kwargs):
        out = real(*args, **kwargs)
        for enc in out:
            enc.trained[enc.ids == tok.eot_id] = False
        return out

    monkeypatch.setattr(check, "encode_conversations", untrained_eot)
    assert any(p.startswith("eot_trained:") for p in check_setup(tok, "lima").problems)
    monkeypatch.setattr(check, "encode_conversations", real)

    def doubled_bos(*args, **kwargs):
        out = real(*args, **kwargs)
        for enc in out:
            enc.ids[1] = tok.bos_id
        return out

    monkeypatch.setattr(check, "encode_conversations", doubled_bos)
    assert any(p.startswith("bos:") for p in check_setup(tok, "lima").problems)
    monkeypatch.setattr(check, "encode_conversations", real)

    monkeypatch.setattr(check, "_stop_ids", lambda tokenizer, template: ({tok.eos_id}, {tok.eos_id}))
    problems = check_setup(tok, "lima").problems
    assert any(p.startswith("decode_stop:") for p in problems)
    assert any(p.startswith("export_stop:") for p in problems)


def _bad_prefix_dir(chatml_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(chatml_dir, bad)
    config = json.loads((bad / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML_TEMPLATE.replace("{{ '<|im_start|>assistant\\n' }}{% endif %}",
                                                      "{{ '<|im_start|>assistant\\n\\n' }}{% endif %}")
    (bad / "tokenizer_config.json").write_text(json.dumps(config))
    (bad / "chat_template.jinja").unlink(missing_ok=True)
    return bad


def test_check_template_command(chatml_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"conversations": ["Hi?", "Hello.", "Bye?", "Bye."], "source": "t"}) + "\n")
    ok = subprocess.run([sys.executable, "-m", "lima_jax.data", "check-template", "--tokenizer", str(chatml_dir),
                         "--template", "chat", "--data", str(data)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "check-template: ok" in ok.stdout and "\u27e6Hello.<|im_end|>\u27e7" in ok.stdout

    bad = subprocess.run([sys.executable, "-m", "lima_jax.data", "check-template", "--tokenizer",
                          str(_bad_prefix_dir(chatml_dir, tmp_path)), "--template", "chat"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAILED prefix:" in bad.stderr
