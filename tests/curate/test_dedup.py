"""Near-duplicates, contamination and the report: planted duplicates are found and distinct pairs
are not; evaluation prompts are found in training data; the real instruction sets go through
filters, dedup and a report."""

import json
import pathlib
import random

import pytest

from lima_jax.curate import bench, contamination, dedup, report
from lima_jax.curate.config import get_default_curate_config
from lima_jax.curate.pipeline import curate
from lima_jax.curate.records import Record, read_records

FIXTURE = pathlib.Path(__file__).parents[1] / "helpers" / "data_fixtures" / "curate"

_TOPICS = ("volcanoes", "bicycles", "tea", "glaciers", "chess", "bees", "comets", "violins", "bridges",
           "mushrooms", "satellites", "deserts")
_WORDS = ("form", "move", "grow", "change", "last", "matter", "differ", "work", "fail", "start")


def _distinct_texts(n, rng):
    """n texts that share a vocabulary but are far apart as 3-gram sets."""
    out = []
    for k in range(n):
        words = [rng.choice(_TOPICS + _WORDS) for _ in range(60)]
        out.append(f"Tell me about {_TOPICS[k % len(_TOPICS)]} number {k}. " + " ".join(words))
    return out


def test_planted_near_duplicates_found_and_distinct_pairs_not():
    rng = random.Random(0)
    texts = _distinct_texts(200, rng)
    planted_texts, planted = bench.planted_set(texts, 0.1, seed=1)
    pairs = dedup.find_duplicate_pairs(planted_texts, threshold=0.7)
    assert bench.recall([(p.i, p.j) for p in pairs], planted, len(planted_texts)) == 1.0
    planted_set = set(planted)
    assert all((p.i, p.j) in planted_set for p in pairs), "a pair of distinct texts was reported"
    # Every reported pair really is above the threshold (LSH candidates are confirmed exactly).
    for p in pairs:
        a, b = (dedup.shingles(planted_texts[k]) for k in (p.i, p.j))
        assert dedup.jaccard(a, b) == pytest.approx(p.similarity) and p.similarity >= 0.7


def test_lsh_matches_exhaustive_search():
    rng = random.Random(3)
    texts, _ = bench.planted_set(_distinct_texts(150, rng), 0.2, seed=4)
    lsh = {(p.i, p.j) for p in dedup.find_duplicate_pairs(texts, threshold=0.6)}
    exact = set(bench.exhaustive_pairs(texts, 0.6, 3))
    assert lsh <= exact and len(lsh) >= 0.95 * len(exact) > 0


def test_normalisation_and_exact_duplicates():
    assert dedup.normalize("Below is an instruction that describes a task. Write a response that "
                           "appropriately completes the request. ### Instruction: Hello, World!") == "hello world"
    texts = ["Hello, world!", "hello   WORLD", "Goodbye world", "Hello, world."]
    pairs = dedup.find_duplicate_pairs(texts)
    assert {(p.i, p.j) for p in pairs} == {(0, 1), (0, 3)} and all(p.exact for p in pairs)


@pytest.mark.parametrize("keep, kept_id", [("first", "a"), ("longest", "b"), ("score", "c")])
def test_one_record_kept_per_cluster(keep, kept_id):
    base = "The quick brown fox jumps over the lazy dog near the quiet river bank today"
    records = [Record("q", base, "s", id="a", score=1), Record("q", base + " and again", "s", id="b", score=2),
               Record("q", base + "!", "s", id="c", score=9), Record("other", "Completely different words here", "s", id="d")]
    config = get_default_curate_config()
    config.dedup.keep = keep
    result = dedup.dedup_records(records, config)
    assert len(result.clusters) == 1 and result.clusters[0].members == [0, 1, 2]
    assert sorted(r.id for r in result.kept) == sorted([kept_id, "d"])


def test_either_key_catches_same_prompt_with_other_answer():
    records = [Record("How do magnets attract iron filings on a table", "Magnetic domains align.", "s", id="1"),
               Record("How do magnets attract iron filings on a table", "Fields induce poles in iron.", "s", id="2")]
    config = get_default_curate_config()
    assert len(dedup.dedup_records(records, config).kept) == 2  # prompt + response differ enough
    config.dedup.key = "either"
    assert [r.id for r in dedup.dedup_records(records, config).kept] == ["1"]


def test_contamination_found_and_removed():
    prompts = contamination.read_eval_prompts(str(FIXTURE / "eval_prompts.jsonl"))
    records = [Record("Please write a haiku about a lighthouse keeper who lost his only friend at sea!", "r", id="hit"),
               Record("Write a haiku about a lighthouse.", "r", id="near-miss"),
               Record("Could you plan a picnic for four?", "r", id="short-hit"),
               Record("Explain how an engine works.", "r", id="clean")]
    hits = contamination.find_contamination(records, prompts, n=8)
    assert sorted((records[h.record].id, prompts[h.prompt].id) for h in hits) == [
        ("hit", "eval-1"), ("short-hit", "eval-3")]
    kept, removed = contamination.remove_contaminated(records, hits)
    assert [r.id for r in kept] == ["near-miss", "clean"] and len(removed) == 2
    summary = contamination.contamination_report(records, prompts, hits, removed=True)
    assert summary["per_eval_set"]["eval_prompts"] == {"prompts": 3, "prompts_overlapped": 2, "training_records": 2}


def test_eval_prompt_formats(tmp_path):
    rows = {"vicuna.jsonl": {"question_id": 1, "text": "A vicuna prompt", "category": "generic"},
            "koala.jsonl": {"id": "k1", "prompt": "A koala prompt"},
            "wizard.jsonl": {"idx": 3, "Skill": "Math", "Instruction": "A wizard prompt"},
            "selfinst.jsonl": {"id": "s", "instruction": "Fix it", "instances": [{"input": "teh cat"}]},
            "test.jsonl": {"conversations": ["A lima prompt"], "source": ""}}
    for name, row in rows.items():
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    prompts = contamination.read_eval_prompts([str(tmp_path / n) for n in rows])
    assert [(p.eval_set, p.text) for p in prompts] == [
        ("vicuna", "A vicuna prompt"), ("koala", "A koala prompt"), ("wizard", "A wizard prompt"),
        ("selfinst", "Fix it\n\nteh cat"), (f"{tmp_path.name}_test", "A lima prompt")]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "?"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no prompt field"):
        contamination.read_eval_prompts(str(tmp_path / "bad.jsonl"))


def test_report_markdown_and_json_on_fixture():
    prompts = contamination.read_eval_prompts(str(FIXTURE / "eval_prompts.jsonl"))
    result = curate(read_records(str(FIXTURE / "dump.jsonl")), get_default_curate_config(), prompts)
    built = result.report
    json.dumps(built)  # JSON-ready
    assert [s["records"] for s in built["stages"]] == [20, 11, 9, 8]
    rules = {r["rule"]: r for r in built["rules"]}
    assert (rules["se_score"]["in"], rules["se_score"]["out"]) == (8, 6)
    assert built["duplicates"]["listed"][0]["kept"] == "dup-a"
    assert sorted(built["duplicates"]["listed"][0]["removed"]) == ["dup-b", "dup-exact"]
    assert built["output"]["per_source"]["all"]["examples"] == 8
    md = report.to_markdown(built)
    for heading in ("## Filters", "## Output per source", "## Duplicates", "## Contamination"):
        assert heading in md
    assert "| se_first_person |" in md and "| dup-a |" not in md.split("## Duplicates")[0]


def test_real_instruction_sets_through_filters_and_dedup(shared_data):
    files = sorted((shared_data / "instruct").glob("*.json"))
    assert files, f"no instruction sets in {shared_data / 'instruct'}"
    prompts = contamination.read_eval_prompts(
        [str(shared_data / "lima" / "test.jsonl")] + sorted(str(p) for p in (shared_data / "eval_prompts").glob("*.jsonl")))
    assert len(prompts) == 300 + 80 + 180 + 218 + 252
    config = get_default_curate_config()
    for path in files:
        records = read_records(str(path))  # every record is read and checked ...
        assert len(records) >= 1000
        # ... and, to keep the test fast, the first 1,200 of each file (all of Dolly) are curated.
        part = records if path.stem == "dolly_3k" else records[:1200]
        result = curate(part, config, prompts, files=[str(path)])
        built = result.report
        assert built["input"]["examples"] == len(part)
        assert built["stages"][-1]["records"] == len(result.records) > 0.9 * len(part), path.name
        assert built["duplicates"]["removed"] == len(result.removed.get("duplicates", []))
        assert "## Duplicates" in report.to_markdown(built)
        if path.stem == "dolly_3k":  # Dolly asks some questions several times
            assert built["duplicates"]["clusters"] >= 5


def test_lima_train_is_clean_of_its_own_test_set(shared_data):
    records = read_records(str(shared_data / "lima" / "train.jsonl"))
    prompts = contamination.read_eval_prompts(str(shared_data / "lima" / "test.jsonl"))
    hits = contamination.find_contamination(records, prompts)
    # One authored example shares a phrase with a test prompt; nothing more.
    assert len({h.record for h in hits}) <= 2
    # Every test prompt planted into the training data is found.
    planted = records[:50] + [Record(p.text, "answer", "planted", id=f"p{i}") for i, p in enumerate(prompts[:30])]
    found = {planted[h.record].id for h in contamination.find_contamination(planted, prompts)}
    assert {f"p{i}" for i in range(30)} <= found
