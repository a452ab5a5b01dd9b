"""The grain pipeline: batch contract, exact epochs, host shards, determinism, resume, workers."""

import json

import numpy as np
import pytest

from lima_jax.data import BATCH_KEYS, build_pipeline, count_steps, get_default_data_config
from lima_jax.data.errors import DataError
from tests.helpers.data_fixtures import tiny


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    return tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    return tiny.write_lima_like(tmp_path_factory.mktemp("data") / "train.jsonl", n=45, seed=3,
                                long_every=11)


def make_config(data_path, tok, **overrides):
    c = get_default_data_config()
    c.path, c.tokenizer = str(data_path), tok.path if tok else ""
    c.max_len, c.global_batch_size, c.num_epochs = 128, 4, 2
    c.process_index, c.process_count = 0, 1
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def all_batches(pipeline):
    return list(pipeline.iterator())


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("pack", [False, True])
def test_batch_contract(data_file, tok, pack):
    p = build_pipeline(make_config(data_file, tok, pack=pack))
    batches = all_batches(p)
    assert len(batches) == p.num_steps == sum(p.steps_per_epoch)
    dtypes = {"tokens": np.int32, "targets": np.int32, "loss_mask": np.float32,
              "segment_ids": np.int32, "positions": np.int32}
    for b in batches:
        assert set(b) == set(BATCH_KEYS)
        for k in BATCH_KEYS:
            assert b[k].shape == (4, 128) and b[k].dtype == dtypes[k]
        seg = b["segment_ids"]
        pad = seg == 0
        assert not b["loss_mask"][pad].any() and (b["tokens"][pad] == tok.pad_id).all()
        for r in range(4):
            for s in np.unique(seg[r][seg[r] > 0]):
                span = np.flatnonzero(seg[r] == s)
                assert (np.diff(span) == 1).all()  # contiguous
                assert b["positions"][r, span].tolist() == list(range(len(span)))
                assert b["tokens"][r, span[0]] == tok.bos_id
                # the target is the next token of the same example
                assert (b["targets"][r, span[:-1]] == b["tokens"][r, span[1:]]).all()
            if not pack:
                assert seg[r].max() <= 1


def segments_of_epoch(pipeline, epoch_batches):
    """Every example of the epoch as (ids, trained), rebuilt from the batches."""
    out = []
    for b in epoch_batches:
        for r in range(b["tokens"].shape[0]):
            seg = b["segment_ids"][r]
            for s in np.unique(seg[seg > 0]):
                span = seg == s
                ids = np.concatenate([b["tokens"][r, span], b["targets"][r, span][-1:]])
                out.append((tuple(ids.tolist()), tuple(b["loss_mask"][r, span].astype(bool).tolist())))
    return sorted(out)


def test_each_epoch_has_every_example_once_with_its_loss_mask(data_file, tok):
    p = build_pipeline(make_config(data_file, tok, pack=True))
    batches = all_batches(p)
    ex = p.examples
    expected = sorted(
        (tuple(ex.example(i)[0].tolist()), tuple(ex.example(i)[1][1:].tolist()))
        for i in range(ex.num_examples))
    first = p.steps_per_epoch[0]
    assert segments_of_epoch(p, batches[:first]) == expected
    assert segments_of_epoch(p, batches[first:]) == expected


def test_hosts_get_their_rows_of_every_global_batch(data_file, tok):
    whole = all_batches(build_pipeline(make_config(data_file, tok, pack=True)))
    hosts = [all_batches(build_pipeline(make_config(data_file, tok, pack=True, process_index=i,
                                                    process_count=2))) for i in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == len(whole)
    for step, global_batch in enumerate(whole):
        for k in BATCH_KEYS:
            joined = np.concatenate([hosts[0][step][k], hosts[1][step][k]])
            np.testing.assert_array_equal(joined, global_batch[k])
    with pytest.raises(DataError, match="global_batch_size: 4 does not split evenly over 3 hosts"):
        build_pipeline(make_config(data_file, tok, process_index=0, process_count=3))


def test_seed_decides_the_batches(data_file, tok):
    a = all_batches(build_pipeline(make_config(data_file, tok, seed=1)))
    assert_same(a, all_batches(build_pipeline(make_config(data_file, tok, seed=1))))
    b = all_batches(build_pipeline(make_config(data_file, tok, seed=2)))
    assert not np.array_equal(a[0]["tokens"], b[0]["tokens"])


def test_state_restores_mid_epoch_exactly(data_file, tok):
    p = build_pipeline(make_config(data_file, tok, num_epochs=1))
    it = p.iterator()
    head = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = list(it)
    resumed = p.iterator()
    resumed.set_state(json.loads(json.dumps(state)))  # a state survives a JSON round trip
    assert_same(list(resumed), rest)
    assert_same(head + rest, all_batches(p))


def test_workers_give_the_same_batches_and_resume(data_file, tok):
    """The one multi-process test (grain workers are slow to start)."""
    config = make_config(data_file, tok, pack=True)
    expected = all_batches(build_pipeline(config))
    config.worker_count = 2
    p = build_pipeline(config)
    it = p.iterator()
    head = [next(it) for _ in range(5)]
    state = it.get_state()
    it.close()
    resumed = p.iterator()
    resumed.set_state(json.loads(json.dumps(state)))  # as a checkpoint would store it
    rest = list(resumed)
    resumed.close()
    assert_same(head + rest, expected)


def test_count_steps_is_exact(data_file, tok):
    for pack in (False, True):
        config = make_config(data_file, tok, pack=pack, num_epochs=3)
        assert count_steps(config) == len(all_batches(build_pipeline(config)))
    config = make_config(data_file, tok)
    assert count_steps(config, num_epochs=5) == 5 * -(-45 // 4)


def test_trimmed_and_dropped_are_counted(tmp_path, tok):
    rows = [
        {"conversations": ["short question", "short answer"]},
        {"conversations": ["question", " ".join(["long answer"] * 200)]},  # trimmed
        {"conversations": [" ".join(["long prompt"] * 200), "answer"]},  # nothing trainable left
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    p = build_pipeline(make_config(path, tok, max_len=64, global_batch_size=2))
    counts = p.examples.counts()
    assert (counts["examples"], counts["trimmed"], counts["dropped_no_trained_token"]) == (2, 2, 1)
    assert p.examples.lengths.max() == 64
    assert "1 dropped with no trained token" in p.summary()
    batches = all_batches(p)
    assert max(int(b["segment_ids"].astype(bool).sum(1).max()) for b in batches) == 64


def test_skip_bad_records_then_build(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"conversations": ["q", "a"]})
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: malformed JSON"):
        build_pipeline(make_config(path, tok))
    p = build_pipeline(make_config(path, tok, on_error="skip"))
    assert p.skips.total == 1 and "1 bad records skipped" in p.summary()


def test_a_lone_surrogate_is_a_located_error_or_a_counted_skip(tmp_path, tok):
    # SentencePiece, inside the grain encoding stage, fails on it with no location.
    path = tmp_path / "d.jsonl"
    good = json.dumps({"conversations": ["q", "a"]})
    path.write_text(f'{good}\n{{"conversations": ["q", "bad \\ud800 answer"]}}\n{good}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: text that cannot be encoded as UTF-8"):
        build_pipeline(make_config(path, tok))
    p = build_pipeline(make_config(path, tok, on_error="skip"))
    assert p.skips.to_dict()["by_kind"] == {"unencodable": 1} and p.examples.num_examples == 2
    assert len(all_batches(p)) == p.num_steps


def test_trained_tokenizer_from_config_is_cached_in_workdir(data_file, tmp_path):
    config = make_config(data_file, None)
    config.train_tokenizer.vocab_size = 200
    with pytest.raises(DataError, match="train_tokenizer.vocab_size: SentencePiece cannot train"):
        build_pipeline(config, workdir=str(tmp_path))
    config.train_tokenizer.vocab_size = 420
    p = build_pipeline(config, workdir=str(tmp_path))
    files = list((tmp_path / "tokenizer").glob("*.model"))
    assert len(files) == 1 and p.tokenizer.path == str(files[0])
    assert p.tokenizer.vocab_size <= 421 and p.tokenizer.padded_vocab_size == 512
    build_pipeline(config, workdir=str(tmp_path))
    assert list((tmp_path / "tokenizer").glob("*.model")) == files


def test_config_errors_name_the_key(data_file, tok):
    for overrides, key in [({"path": ""}, "config.data.path"),
                           ({"packing": "worst_fit"}, "config.data.packing"),
                           ({"global_batch_size": 0}, "config.data.global_batch_size"),
                           ({"tokenizer": ""}, "config.data.tokenizer"),
                           ({"seed": -1}, "config.data.seed"),
                           ({"process_index": 2, "process_count": 2}, "config.data.process_index"),
                           ({"template": "chatml"}, "config.data.template"),
                           ({"format": "csv"}, "config.data.format"),
                           ({"on_error": "ignore"}, "config.data.on_error")]:
        with pytest.raises(DataError, match=key):
            build_pipeline(make_config(data_file, tok, **overrides))


def test_lima_train_set_steps_and_packing(shared_data):
    config = get_default_data_config()
    config.path = str(shared_data / "lima" / "train.jsonl")
    config.tokenizer = str(shared_data / "tokenizer" / "llama" / "tokenizer.model")
    config.process_index, config.process_count = 0, 1
    padded = build_pipeline(config)
    assert padded.num_steps == 15 * 33  # 1,030 examples at batch 32, 15 epochs
    counts = padded.examples.counts()
    assert counts["trimmed"] == 69 and counts["trailing_user_turns_removed"] == 1
    assert counts["dropped_no_trained_token"] == 0
    assert "15 epochs x 33 steps = 495 steps at global batch 32" in padded.summary()
    config.pack = True
    packed = build_pipeline(config, tokenizer=padded.tokenizer)
    assert packed.packing_efficiency() >= 0.95
    assert packed.num_steps == sum(packed.steps_per_epoch) < padded.num_steps
    batch = packed.batch(0)
    assert batch["tokens"].shape == (32, 2048)
    assert 0.95 < (batch["segment_ids"] > 0).mean()
