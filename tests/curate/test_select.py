"""Selection: per-source quotas met exactly (and a clear error when a source runs short), nested
subsets nest, longest-N is the longest with a deterministic tie-break, seeds decide everything."""

from __future__ import annotations

import json

import pytest

from lima_jax.curate.select import (
    TABLE1_QUOTAS,
    longest_n,
    nested_subsets,
    random_n,
    record_source,
    response_text,
    stratified,
)


def _pool(counts: dict[str, int]) -> list[dict]:
    """Records with distinct responses whose lengths vary with their index."""
    records = []
    for source, n in counts.items():
        for i in range(n):
            records.append({"prompt": f"{source} question {i}",
                            "response": f"{source}-{i} " + "x" * ((i * 7) % 23), "source": source})
    return records


def _ids(records):
    return [r["prompt"] for r in records]


def test_response_text_reads_every_format():
    assert response_text({"prompt": "q", "response": "a"}) == "a"
    assert response_text({"conversations": ["q", "a"]}) == "a"
    assert response_text({"conversations": ["q1", "a1", "q2", "a2"]}) == "a1\n\na2"
    assert response_text({"conversations": [{"from": "human", "value": "q"},
                                            {"from": "gpt", "value": "a"}]}) == "a"
    assert response_text({"messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a"}]}) == "a"
    assert response_text({"instruction": "q", "input": "", "output": "a"}) == "a"
    with pytest.raises(ValueError, match="no response"):
        response_text({"prompt": "q"})
    assert record_source({"category": "open_qa"}) == "open_qa"
    assert record_source({"source": "wikihow", "category": "x"}) == "wikihow"


def test_stratified_meets_quotas_exactly_and_leaves_out_other_sources():
    pool = _pool({"a": 30, "b": 12, "c": 9})
    chosen = stratified(pool, {"a": 10, "b": 12}, seed=3)
    counts = {s: sum(r["source"] == s for r in chosen) for s in ("a", "b", "c")}
    assert counts == {"a": 10, "b": 12, "c": 0}
    assert len({id(r) for r in chosen}) == len(chosen)  # no record twice
    positions = [pool.index(r) for r in chosen]
    assert positions == sorted(positions)  # input order kept
    assert _ids(stratified(pool, {"a": 10, "b": 12}, seed=3)) == _ids(chosen)
    assert _ids(stratified(pool, {"a": 10, "b": 12}, seed=4)) != _ids(chosen)


def test_stratified_names_the_short_source():
    pool = _pool({"a": 30, "b": 5})
    with pytest.raises(ValueError, match=r"'b' has 5 records, its quota is 6"):
        stratified(pool, {"a": 3, "b": 6})
    with pytest.raises(ValueError, match=r"'missing' has 0 records"):
        stratified(pool, {"missing": 1})
    with pytest.raises(ValueError, match="quota for source 'a'"):
        stratified(pool, {"a": -1})


def test_longest_n_is_longest_with_a_stable_tie_break():
    pool = _pool({"a": 40})
    chosen = longest_n(pool, 8)
    lengths = [len(r["response"]) for r in pool]
    cut = len(chosen[-1]["response"])
    assert all(len(r["response"]) >= cut for r in chosen)
    assert sum(length > cut for length in lengths) <= 8 <= sum(length >= cut for length in lengths)
    assert [len(r["response"]) for r in chosen] == sorted(lengths, reverse=True)[:8]
    # Ties: equal lengths come in input order.
    ties = [{"response": "same", "source": "s", "prompt": str(i)} for i in range(5)]
    assert _ids(longest_n(ties, 3)) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="only 40 are available"):
        longest_n(pool, 41)


def test_random_n_is_deterministic_by_seed_and_nests():
    pool = _pool({"a": 50})
    assert _ids(random_n(pool, 10, seed=1)) == _ids(random_n(pool, 10, seed=1))
    assert _ids(random_n(pool, 10, seed=1)) != _ids(random_n(pool, 10, seed=2))
    assert _ids(random_n(pool, 20, seed=1))[:10] == _ids(random_n(pool, 10, seed=1))
    assert len(set(_ids(random_n(pool, 50, seed=0)))) == 50


def test_nested_subsets_nest_and_match_random_n():
    pool = _pool({"a": 70, "b": 60})
    subsets = nested_subsets(pool, [64, 16, 32, 128], seed=7)
    assert list(subsets) == [16, 32, 64, 128]
    for small, large in zip(list(subsets)[:-1], list(subsets)[1:]):
        assert len(subsets[small]) == small
        assert set(_ids(subsets[small])) <= set(_ids(subsets[large]))
    assert _ids(subsets[32]) == _ids(random_n(pool, 32, seed=7))
    assert _ids(nested_subsets(pool, [16], seed=8)[16]) != _ids(subsets[16])
    with pytest.raises(ValueError, match="asked for 200"):
        nested_subsets(pool, [16, 200])


def test_table1_preset_on_the_real_lima_set(shared_data):
    records = [json.loads(line) for line in
               (shared_data / "lima" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    chosen = stratified(records, TABLE1_QUOTAS, seed=0)
    assert len(chosen) == sum(TABLE1_QUOTAS.values()) == 1000
    for source, quota in TABLE1_QUOTAS.items():
        assert sum(r["source"] == source for r in chosen) == quota
    assert not any(r["source"] == "multi_turn" for r in chosen)
    longest = longest_n(records, 50)
    assert min(len(response_text(r)) for r in longest) >= max(
        len(response_text(r)) for r in records if not any(r is x for x in longest))
