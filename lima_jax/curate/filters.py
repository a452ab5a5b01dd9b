"""LIMA's filters: the Stack Exchange and wikiHow rules, generic bounds and boilerplate, each counted.

A rule either drops a record or rewrites it; rules run in a fixed order (below) and each counts
the records it saw, dropped and changed, with the first few dropped locations, so a report can
say exactly where a data set went. Source-specific rules apply to records whose ``source``
starts with one of the configured prefixes (``stackexchange`` matches ``stackexchange/cooking``).

Order, and why: empty and boilerplate answers go first (no point cleaning them); the Stack
Exchange score is checked before cleaning; markup is removed *before* the 1,200-4,096 character
bound, because the cleaned text is what the model trains on; then first person and references
to other answers; the wikiHow rewrites; the generic length bounds last, on the final text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence

import ml_collections

from lima_jax.curate import markup
from lima_jax.curate.records import Record

MAX_LISTED = 5  # dropped locations listed per rule; the counts cover all of them


@dataclasses.dataclass(frozen=True)
class Rule:
    """A named filter: ``apply`` returns the record (possibly rewritten) or None to drop it."""

    name: str
    description: str
    applies: Callable[[Record], bool]
    apply: Callable[[Record], Record | None]


@dataclasses.dataclass
class RuleStats:
    """What one rule did: records in (seen), out (kept), dropped, changed, first dropped ones."""

    name: str
    description: str
    seen: int = 0
    dropped: int = 0
    changed: int = 0
    first_dropped: list[str] = dataclasses.field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.seen - self.dropped

    def to_dict(self) -> dict:
        return {"rule": self.name, "description": self.description, "in": self.seen,
                "out": self.kept, "dropped": self.dropped, "changed": self.changed,
                "first_dropped": list(self.first_dropped)}


@dataclasses.dataclass
class FilterResult:
    kept: list[Record]
    stats: list[RuleStats]
    dropped: list[tuple[Record, str]]  # (record as it reached the rule, rule name)


# ---------------------------------------------------------------------------------------------
# The tests behind the rules (public: tests and other tools call them directly).

_FIRST_PERSON = re.compile(r"\bI(?![/\-.]\w)(?:'(?:m|ve|d|ll))?\b|\b(?:me|my|mine|myself)\b", re.IGNORECASE)
# "I" that is not the pronoun: Type I error, World War I, Henry I, Part I.
_NOT_PRONOUN_I = re.compile(
    r"\b(?:Type|Part|Phase|Class|Chapter|War|Volume|Stage|Schedule|Level|Article|Appendix|Henry|"
    r"Louis|Elizabeth|Charles|George|James|William|Edward|Richard|Napoleon)\s+I\b")
_LOWER_I = re.compile(r"(?<![\w'])i(?![\w'])")  # a lower-case "i" is a variable, not the pronoun


def first_person_rate(text: str) -> float:
    """First-person singular pronouns (I, I'm, me, my, mine, myself) per 100 words of prose;
    code blocks and inline code are not prose."""
    prose = _NOT_PRONOUN_I.sub(" ", markup.strip_code(text))
    words = len(prose.split())
    if words == 0:
        return 0.0
    hits = [m for m in _FIRST_PERSON.finditer(prose) if not _LOWER_I.fullmatch(m.group(0))]
    return 100.0 * len(hits) / words


_OTHER_ANSWERS = re.compile(
    r"\b(?:other|another|previous|accepted|above|earlier|existing|top[- ]voted|highest[- ]voted|"
    r"selected)\s+answers?\b"
    r"|\banswers?\s+(?:above|below)\b"
    r"|\bas\s+(?:\w+\s+){0,2}(?:mentioned|stated|said|noted|pointed\s+out|suggested|answered)\s+"
    r"(?:above|earlier|before|previously|already|elsewhere|in\s+(?:the|an?|another|other)\s+"
    r"(?:answers?|comments?|posts?))"
    r"|\b(?:others|other\s+people|someone|somebody|several\s+people|many\s+people|the\s+OP)\s+"
    r"(?:have|has)\s+(?:already\s+)?(?:said|mentioned|pointed\s+out|noted|suggested|answered)"
    r"|\bcomments?\s+(?:above|below)\b",
    re.IGNORECASE)


def refers_to_other_answers(text: str) -> str | None:
    """The first phrase of the prose that points at other answers ("as mentioned above",
    "the other answer", ...), or None."""
    match = _OTHER_ANSWERS.search(markup.strip_code(text))
    return match.group(0) if match else None


_BOILERPLATE_WORDS = re.compile(r"[\W_]+")
_BOILERPLATE_EXACT = {
    "", "n/a", "na", "none", "null", "nan", "no answer", "no output", "no response", "deleted",
    "removed", "thanks", "thank you", "same as above", "see above", "see below", "todo", "tbd",
    "not applicable", "no input", "answer", "output",
}
_BOILERPLATE_EXACT = {_BOILERPLATE_WORDS.sub(" ", p).strip() for p in _BOILERPLATE_EXACT}  # "n/a" -> "n a"
# Canned model refusals. "As an AI assistant" / "I am an AI" are left alone: a hand-written answer
# to "are you a person?" says exactly that (five of LIMA's author-written examples do).
_DISCLAIMER = re.compile(
    r"\bas an? (?:ai|artificial intelligence) language model\b"
    r"|\bas a (?:large )?language model\b"
    r"|\bi(?:'m| am) (?:sorry, )?(?:but )?(?:not able|unable) to (?:browse|access)"
    r"|\bi cannot fulfill\b|\bi'm sorry, but i (?:cannot|can't|am unable to)\b"
    r"|\bi (?:do not|don't) have (?:the ability|access) to (?:browse|access)",
    re.IGNORECASE)


def boilerplate_reason(response: str) -> str | None:
    """Why a response is boilerplate ("empty-ish: 'N/A'", "AI disclaimer: ..."), or None."""
    bare = _BOILERPLATE_WORDS.sub(" ", response.lower()).strip()
    if bare in _BOILERPLATE_EXACT or response.strip() in ("[deleted]", "[removed]", "...", "-"):
        return f"placeholder answer {response.strip()[:40]!r}"
    match = _DISCLAIMER.search(response)
    return f"AI disclaimer {match.group(0)!r}" if match else None


_ARTICLE = re.compile(r"\b([Tt])his (?:article|wikiHow)\b")


def rewrite_article_reference(text: str) -> str:
    """wikiHow's "This article ..." (and "This wikiHow ...") -> "The following answer ..."."""
    return _ARTICLE.sub(lambda m: ("The" if m.group(1) == "T" else "the") + " following answer", text)


_HEADING = re.compile(r"^(#{1,6})\s*(.+?)\s*#*\s*$")


def drop_sections(text: str, titles: Iterable[str]) -> str:
    """Removes Markdown sections whose heading is one of ``titles`` (case-insensitive), up to the
    next heading of the same or a higher level."""
    wanted = {t.strip().lower() for t in titles if t.strip()}
    out, dropping = [], 0  # dropping: level of the heading being dropped (0 = not dropping)
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if dropping and level > dropping:
                continue
            dropping = level if heading.group(2).strip().lower() in wanted else 0
        if not dropping:
            out.append(line)
    joined = "\n".join(out)
    return text if joined == text else re.sub(r"\n{3,}", "\n\n", joined).strip()


# ---------------------------------------------------------------------------------------------
# Building the rules from the config.


def _prefixes(spec: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in spec.split(",") if p.strip())


def _from(prefixes: tuple[str, ...]) -> Callable[[Record], bool]:
    return lambda r: r.source.lower().startswith(prefixes) if prefixes else False


def _rewrite(fn: Callable[[str], str]) -> Callable[[Record], Record]:
    def apply(record: Record) -> Record:
        response = fn(record.response)
        return record if response == record.response else dataclasses.replace(record, response=response)
    return apply


def _keep_if(test: Callable[[Record], bool]) -> Callable[[Record], Record | None]:
    return lambda r: r if test(r) else None


def _within(low: int, high: int) -> Callable[[int], bool]:
    return lambda n: n >= low and (high == 0 or n <= high)


def build_rules(config: ml_collections.ConfigDict) -> list[Rule]:
    """The rules of ``config`` (see get_default_curate_config), in the order they run."""
    every = lambda r: True
    se, wh, g = config.stackexchange, config.wikihow, config.generic
    is_se, is_wh = _from(_prefixes(se.sources)), _from(_prefixes(wh.sources))
    se_length = _within(se.min_chars, se.max_chars)
    prompt_ok = _within(g.min_prompt_chars, g.max_prompt_chars)
    response_ok = _within(g.min_response_chars, g.max_response_chars)
    rules = [Rule("empty", "prompt or response empty or whitespace", every,
                  _keep_if(lambda r: bool(r.prompt.strip() and r.response.strip())))]
    if g.boilerplate:
        rules.append(Rule("boilerplate", "placeholder answers and AI disclaimers", every,
                          _keep_if(lambda r: boilerplate_reason(r.response) is None)))
    rules += [
        Rule("se_score", f"Stack Exchange answer score >= {se.min_score}"
             + ("" if se.require_score else " (records without a score pass)"), is_se,
             _keep_if(lambda r: r.score >= se.min_score if r.score is not None
                      else not se.require_score)),
        Rule("se_markup", "Stack Exchange: links, images and HTML removed; code and lists kept",
             is_se, _rewrite(markup.clean_answer)),
        Rule("se_length", f"Stack Exchange answer of {se.min_chars:,} to {se.max_chars:,} characters",
             is_se, _keep_if(lambda r: se_length(len(r.response)))),
        Rule("se_first_person",
             f"Stack Exchange: not first person (<= {se.max_first_person_per_100_words:g} "
             "I/me/my per 100 words)", is_se,
             _keep_if(lambda r: first_person_rate(r.response) <= se.max_first_person_per_100_words)),
        Rule("se_other_answers", "Stack Exchange: no reference to other answers", is_se,
             _keep_if(lambda r: refers_to_other_answers(r.response) is None)),
        Rule("wikihow_markup", "wikiHow: links removed and sections dropped (" + wh.drop_sections + ")",
             is_wh, _rewrite(lambda t: markup.remove_links(drop_sections(t, wh.drop_sections.split(","))))),
        Rule("wikihow_article", 'wikiHow: "This article..." rewritten to "The following answer..."',
             is_wh, _rewrite(rewrite_article_reference)),
        Rule("prompt_length", _bounds("prompt", g.min_prompt_chars, g.max_prompt_chars), every,
             _keep_if(lambda r: prompt_ok(len(r.prompt)))),
        Rule("response_length", _bounds("response", g.min_response_chars, g.max_response_chars), every,
             _keep_if(lambda r: response_ok(len(r.response)))),
    ]
    return rules


def _bounds(what: str, low: int, high: int) -> str:
    return f"{what} of at least {low:,} characters" + (f" and at most {high:,}" if high else "")


def apply_filters(records: Sequence[Record], config: ml_collections.ConfigDict,
                  rules: Sequence[Rule] | None = None) -> FilterResult:
    """Runs every rule over ``records`` in order; returns the kept records and per-rule counts."""
    rules = build_rules(config) if rules is None else rules
    stats = [RuleStats(rule.name, rule.description) for rule in rules]
    kept, dropped = [], []
    for record in records:
        current: Record | None = record
        for rule, stat in zip(rules, stats, strict=True):
            if not rule.applies(current):
                continue
            stat.seen += 1
            result = rule.apply(current)
            if result is None:
                stat.dropped += 1
                if len(stat.first_dropped) < MAX_LISTED:
                    stat.first_dropped.append(current.location or current.id)
                dropped.append((current, rule.name))
                current = None
                break
            if result is not current:
                stat.changed += 1
            current = result
        if current is not None:
            kept.append(current)
    return FilterResult(kept, stats, dropped)
