"""``python -m lima_jax.curate`` end to end on the fixture, its errors, and the dedup benchmark."""

import json
import pathlib
import subprocess
import sys

from lima_jax.curate.__main__ import main
from lima_jax.curate.records import read_records

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "helpers" / "data_fixtures" / "curate"
DUMP, EVAL = str(FIXTURE / "dump.jsonl"), str(FIXTURE / "eval_prompts.jsonl")


def test_run_end_to_end_as_a_subprocess(tmp_path):
    out = tmp_path / "curated.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "lima_jax.curate", "run", "--data", DUMP, "--eval", EVAL, "--out", str(out),
         "--report", str(tmp_path / "r.md"), "--report-json", str(tmp_path / "r.json"),
         "--removed", str(tmp_path / "removed.jsonl")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "read 20 -> filters 11 -> duplicates 9 -> contamination 8" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8 and all(set(x) == {"conversations", "source"} for x in lines)
    assert [x for x in lines if len(x["conversations"]) == 4], "the multi-turn chain keeps its history"
    # The output is training data: the data package reads it back.
    assert len(read_records(str(out))) == 8
    removed = {r.id: r.meta["removed_by"] for r in read_records(str(tmp_path / "removed.jsonl"))}
    assert removed["contaminated"] == "contamination" and removed["dup-b"] == "duplicates"
    assert removed["se-first-person"] == "filter:se_first_person" and len(removed) == 12
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["output"]["examples"] == 8
    assert "## Filters" in (tmp_path / "r.md").read_text()


def test_config_overrides_and_errors(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    # A lower score bar keeps the low-score answer; no dedup keeps both tide answers.
    assert main(["run", "--data", DUMP, "--out", out, "--output-format", "qa",
                 "--config.stackexchange.min_score=3", "--config.dedup.enabled=false"]) == 0
    ids = {r.id for r in read_records(out)}
    assert {"se-low-score", "dup-a", "dup-b", "dup-exact", "contaminated"} <= ids
    config_file = tmp_path / "strict.py"
    config_file.write_text("from lima_jax.curate.config import get_default_curate_config\n"
                           "def get_config():\n    c = get_default_curate_config()\n"
                           "    c.stackexchange.min_chars = 1800\n    return c\n")
    assert main(["run", "--data", DUMP, "--out", out, "--output-format", "qa", "--config", str(config_file)]) == 0
    assert "se-third-person" not in {r.id for r in read_records(out)}  # 1,585 characters < 1,800
    capsys.readouterr()
    # Unknown keys and badly typed values are lima_jax.cli.load_config's errors: one line naming the key.
    for argv, message in [
        (["--config.dedup.treshold=0.5"], "treshold"),
        (["--config.dedup.threshold=high"], "dedup.threshold"),
        (["--config", str(tmp_path / "nope.py")], "nope.py: no such config file"),
        (["--config.dedup.threshold=1.5"], "config.dedup.threshold: must be in (0, 1]"),
        (["--config.dedup.key=title"], "config.dedup.key"),
        (["--frobnicate"], "--frobnicate: unknown argument"),
    ]:
        assert main(["run", "--data", DUMP, "--out", out, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"\n')
    assert main(["run", "--data", str(bad), "--out", out]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err


def test_dedup_and_decontaminate_subcommands(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    assert main(["dedup", "--data", DUMP, "--out", out, "--output-format", "qa",
                 "--report-json", str(tmp_path / "d.json")]) == 0
    ids = [r.id for r in read_records(out)]
    assert "dup-a" in ids and "dup-b" not in ids and "dup-exact" not in ids and len(ids) >= 16
    assert json.loads((tmp_path / "d.json").read_text())["duplicates"]["removed"] == 20 - len(ids)
    assert main(["decontaminate", "--data", DUMP, "--eval", EVAL, "--out", out, "--output-format", "qa"]) == 0
    assert len(read_records(out)) == 19 and "1 records overlap 3 evaluation prompts" in capsys.readouterr().out
    assert main(["decontaminate", "--data", DUMP, "--eval", EVAL, "--out", out, "--keep"]) == 0
    assert len(read_records(out)) == 20


def test_select_subcommand(tmp_path, capsys):
    out = str(tmp_path / "s.jsonl")
    assert main(["select", "--data", DUMP, "--out", out, "--method", "stratified",
                 "--quotas", "forum=3,wikihow=2", "--output-format", "qa"]) == 0
    chosen = read_records(out)
    assert sorted(r.source for r in chosen) == ["forum"] * 3 + ["wikihow"] * 2
    assert main(["select", "--data", DUMP, "--out", out, "--method", "longest", "--n", "2",
                 "--output-format", "qa"]) == 0
    assert [r.id for r in read_records(out)] == ["se-too-long", "se-good"]
    nested = str(tmp_path / "n_{size}.jsonl")
    assert main(["select", "--data", DUMP, "--out", nested, "--method", "nested", "--sizes", "4,8",
                 "--output-format", "qa"]) == 0
    small, large = ({r.id for r in read_records(nested.format(size=k))} for k in (4, 8))
    assert len(small) == 4 and len(large) == 8 and small <= large
    capsys.readouterr()
    assert main(["select", "--data", DUMP, "--out", out, "--method", "stratified", "--quotas", "table1"]) == 2
    assert "stackexchange" in capsys.readouterr().err  # the fixture has no LIMA sources


def test_influence_subcommand_checks_its_arguments(tmp_path, capsys):
    # The selection itself is tested on a tiny model in test_curate_influence.py; here, the wiring.
    out = str(tmp_path / "i.jsonl")
    assert main(["influence", "--data", DUMP, "--target", DUMP, "--n", "3", "--out", out]) == 2
    assert "--tokenizer: no tokenizer given" in capsys.readouterr().err
    assert main(["influence", "--data", DUMP, "--target", DUMP, "--n", "3", "--out", out,
                 "--config.dedup.threshold=0.5"]) == 2
    assert "influence takes no --config overrides" in capsys.readouterr().err


def test_bench_dedup_small(monkeypatch, capsys, shared_data):
    from lima_jax import bench

    # Only this benchmark is registered, so the test does not depend on the others' modules.
    monkeypatch.setattr(bench, "BENCHMARKS", {"dedup": "lima_jax.curate.bench"})
    assert bench.main(["dedup", "--json", "--no-record", "--size", "300",
                       "--data", str(shared_data / "instruct" / "random_9k.json")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["benchmark"] == "dedup" and row["examples"] == 315 and row["planted"] == 15
    # Some edits push a planted copy below the threshold: the exhaustive search is the ceiling.
    assert 0.85 <= row["baseline_recall_planted"] <= 1.0
    assert row["baseline_recall_planted"] - 0.05 <= row["recall_planted"] <= row["baseline_recall_planted"]
    assert row["recall_of_exhaustive_pairs"] >= 0.9
    assert row["ratio"] > 0 and row["examples_per_s"] > 0
    for key in ("name", "hardware", "versions", "config", "figure", "baseline"):
        assert row[key], key
