"""Curation records and filters: readers with file:line errors, markup cleaning, and every rule on
cases written to pass and to fail it, plus the per-rule counts."""

import dataclasses
import json
import pathlib

import pytest

from lima_jax.curate import filters, markup
from lima_jax.curate.config import get_default_curate_config
from lima_jax.curate.records import Record, read_records, to_json, write_records
from lima_jax.data.errors import DataError

FIXTURE = pathlib.Path(__file__).parents[1] / "helpers" / "data_fixtures" / "curate"


def _write(path, rows, array=False):
    text = json.dumps(rows) if array else "\n".join(json.dumps(r) for r in rows)
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------ records


def test_reads_every_format(tmp_path):
    qa = _write(tmp_path / "qa.jsonl", [{"prompt": "p", "response": "r", "score": 12, "source": "se/x",
                                         "url": "u"}])
    lima = _write(tmp_path / "lima.jsonl", [{"conversations": ["a", "b", "c", "d"], "source": "multi"},
                                            {"conversations": ["only a prompt"], "source": ""}])
    alpaca = _write(tmp_path / "alpaca.json", [{"instruction": "i", "input": "x", "output": "o"}], array=True)
    dolly = _write(tmp_path / "dolly.json", [{"instruction": "i", "category": "open_qa", "input": "",
                                              "output": "o"}], array=True)
    fastchat = _write(tmp_path / "fc.json", [{"id": "f1", "conversations": [
        {"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]}], array=True)
    records = read_records([qa, lima, alpaca, dolly, fastchat])
    r = {x.location.rsplit("/", 1)[-1]: x for x in records}
    assert r["qa.jsonl:1"].score == 12 and r["qa.jsonl:1"].meta == {"url": "u"}
    assert r["qa.jsonl:1"].source == "se/x"
    assert r["lima.jsonl:1"].history == ("a", "b") and (r["lima.jsonl:1"].prompt, r["lima.jsonl:1"].response) == ("c", "d")
    assert r["lima.jsonl:2"].response == "" and r["lima.jsonl:2"].source == "lima"
    assert r["alpaca.json:1"].prompt == "i\n\nx" and r["alpaca.json:1"].source == "alpaca"
    assert r["dolly.json:1"].source == "open_qa"
    assert r["fc.json:1"].id == "f1" and r["fc.json:1"].response == "g"


def test_round_trip_qa_and_lima(tmp_path):
    records = read_records(str(FIXTURE / "dump.jsonl"))
    write_records(tmp_path / "out.jsonl", records, "qa")
    again = read_records(str(tmp_path / "out.jsonl"))
    strip = lambda r: dataclasses.replace(r, location="")
    assert [strip(r) for r in again] == [strip(r) for r in records]
    multi = next(r for r in records if r.history)
    assert to_json(multi, "lima")["conversations"] == [*multi.history, multi.prompt, multi.response]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p"}, "missing field 'response'"),
    ({"prompt": "p", "response": 3}, "not a string"),
    ({"prompt": "p", "response": "r", "score": "high"}, "not a number"),
    ({"prompt": "p", "response": "r", "history": ["only the user"]}, "must end on an assistant turn"),
    ({"weird": 1}, "unknown record format"),
])
def test_bad_records_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "dump.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "response": "fine"}) + "\n\n" + json.dumps(row) + "\n")
    if "weird" in row:  # an unknown format is detected on the first record
        path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as e:
        read_records(str(path))
    assert str(e.value).startswith(f"{path}:{1 if 'weird' in row else 3}:")


# ------------------------------------------------------------------------------ markup


def test_html_to_text_keeps_code_and_lists_and_drops_links_images_tags():
    html = ('<p>See <a href="https://x.org/a">the docs</a><img src="i.png" alt="pic">.</p>'
            '<pre><code>if a &lt; b:\n    return [a](b)\n</code></pre>'
            '<ol><li>first <b>step</b></li><li>second</li></ol><ul><li>dot</li></ul>')
    text = markup.clean_answer(html)
    assert "<" not in text.replace("a < b", "") and "http" not in text and "pic" not in text
    assert "See the docs." in text
    assert "```\nif a < b:\n    return [a](b)\n```" in text  # verbatim, link syntax untouched
    assert "1. first step\n2. second" in text and "- dot" in text
    # Stack Exchange wraps item text in paragraphs; the item keeps its text on its own line.
    nested = markup.clean_answer("<h2>Fix</h2><ul><li><p>one</p><p>more</p></li><li><p>two</p></li></ul>")
    assert nested == "## Fix\n\n- one\n  more\n- two"


def test_markdown_links_removed_outside_code_only():
    md = ("Read [the guide](https://a.org/x_(y)) and ![shot](s.png) or [ref][1], at https://b.org/c.\n\n"
          "```\ncurl https://keep.me/[x](y)\n```\n\n    indented https://keep.too\n\n"
          "- item with `https://inline.code`\n\n[1]: https://ref.org")
    text = markup.remove_links(md)
    assert text.startswith("Read the guide and or ref, at.")
    for kept in ("curl https://keep.me/[x](y)", "    indented https://keep.too", "`https://inline.code`"):
        assert kept in text
    assert "ref.org" not in text and "shot" not in text


def test_clean_text_is_left_byte_for_byte():
    text = "Two  spaces stay.  \n\n\n\n1. A list\n   continued"
    assert markup.clean_answer(text) == text


# ------------------------------------------------------------------------------ rules


@pytest.mark.parametrize("text, first_person", [
    ("I tried this and my result was that I was wrong; I think it works for me.", True),
    ("The result depends on the input. Use a Type I error rate of 5% and I/O buffering.", False),
    ("```\nfor i in range(3): my_list.append(i)\n```\nThe loop appends three items.", False),
])
def test_first_person(text, first_person):
    assert (filters.first_person_rate(text) > 1.0) is first_person


@pytest.mark.parametrize("text, refers", [
    ("As mentioned above, the cache is the problem.", True),
    ("The other answer is right about caching.", True),
    ("As others have pointed out, it leaks.", True),
    ("The answer is 42, as the formula below shows.", False),
    ("Caching works as described in the documentation.", False),
])
def test_reference_to_other_answers(text, refers):
    assert (filters.refers_to_other_answers(text) is not None) is refers


@pytest.mark.parametrize("response, boilerplate", [
    ("N/A", True), ("[deleted]", True), ("thank you!", True),
    ("As an AI language model, I cannot browse the internet.", True),
    ("No. The function returns None when the list is empty.", False),
    ("I am an AI assistant built to help with recipes.", False),
])
def test_boilerplate(response, boilerplate):
    assert (filters.boilerplate_reason(response) is not None) is boilerplate


def test_wikihow_rewrite_and_sections():
    text = "This article shows how. In this article you learn it.\n\n## Steps\n\n1. Do it.\n\n## Related wikiHows\n\n- Other"
    out = filters.rewrite_article_reference(filters.drop_sections(text, ["Related wikiHows"]))
    assert out == "The following answer shows how. In the following answer you learn it.\n\n## Steps\n\n1. Do it."
    assert filters.rewrite_article_reference("This wikiHow teaches you.") == "The following answer teaches you."


def _se(response, score=20, source="stackexchange/physics"):
    return Record(prompt="q", response=response, source=source, score=score, id="x")


def _verdict(record, config=None):
    result = filters.apply_filters([record], config or get_default_curate_config())
    return result.kept[0] if result.kept else result.dropped[0][1]


def test_stack_exchange_rules_each_pass_and_fail():
    good = "Light scatters off molecules. " * 45  # 1,350 characters of third-person prose
    assert isinstance(_verdict(_se(good)), Record)
    assert _verdict(_se(good, score=9)) == "se_score"
    assert _verdict(_se(good, score=None)) == "se_score"
    config = get_default_curate_config()
    config.stackexchange.require_score = False
    assert isinstance(_verdict(_se(good, score=None), config), Record)
    assert _verdict(_se(good[:1100])) == "se_length"
    assert _verdict(_se(good * 4)) == "se_length"
    assert _verdict(_se("I think I know my answer. " * 60)) == "se_first_person"
    assert _verdict(_se("As mentioned above, light scatters. " + good)) == "se_other_answers"
    # Links count against the length only after they are removed.
    linked = good[:1190] + " [see](https://example.org/" + "a" * 40 + ")"
    assert _verdict(_se(linked)) == "se_length"
    # Other sources are untouched by Stack Exchange rules.
    assert isinstance(_verdict(_se("short and I am fine", source="forum")), Record)


def test_generic_bounds_and_counts():
    config = get_default_curate_config()
    config.generic.max_response_chars = 50
    records = [Record("p", "fine answer", "a", id="1"), Record("p", "x" * 60, "a", id="2"),
               Record("", "r", "a", id="3"), Record("p", "N/A", "b", id="4"),
               Record("How to cook", "This article explains [it](http://x.y).", "wikihow", id="5")]
    result = filters.apply_filters(records, config)
    stats = {s.name: s for s in result.stats}
    assert [r.id for r in result.kept] == ["1", "5"]
    assert result.kept[1].response == "The following answer explains it."
    assert (stats["empty"].seen, stats["empty"].dropped) == (5, 1)
    assert stats["boilerplate"].dropped == 1 and stats["response_length"].dropped == 1
    assert stats["wikihow_markup"].changed == 1 and stats["wikihow_article"].changed == 1
    assert stats["se_score"].seen == 0
    for s in result.stats:  # what goes in comes out or is dropped
        assert s.kept == s.seen - s.dropped and s.kept >= 0


def test_fixture_filters(tmp_path):
    result = filters.apply_filters(read_records(str(FIXTURE / "dump.jsonl")), get_default_curate_config())
    dropped = {r.id: rule for r, rule in result.dropped}
    assert dropped == {
        "gen-empty": "empty", "gen-placeholder": "boilerplate", "gen-disclaimer": "boilerplate",
        "se-low-score": "se_score", "se-no-score": "se_score", "se-short": "se_length",
        "se-too-long": "se_length", "se-first-person": "se_first_person",
        "se-other-answers": "se_other_answers",
    }
    good = next(r for r in result.kept if r.id == "se-good")
    assert "```\nfridge_slice" in good.response and "- Freezing stops it" in good.response
    assert "example.org" not in good.response and "<p>" not in good.response
