"""Markup cleaning for answers: links, images and HTML out; code blocks and lists kept.

Stack Exchange dumps hold answers as HTML (``Posts.xml``) or Markdown (the API's ``body_markdown``),
and wikiHow pages as Markdown; LIMA trains on plain text that keeps code and lists. HTML goes
through the standard library's parser: ``<pre>`` becomes a fenced code block (its text verbatim),
``<li>`` a ``-`` or ``1.`` item, ``<a>`` its text, ``<img>`` nothing, every other tag its text.
Markdown keeps its code (fenced, indented and inline) untouched while links become their text,
images and reference definitions disappear, and bare URLs are dropped.
"""

from __future__ import annotations

import html.parser
import re

_HTML_TAG = re.compile(r"</?(?:p|div|a|img|pre|code|ul|ol|li|br|h[1-6]|blockquote|em|strong|b|i|"
                       r"span|table|tr|td|th|hr|sup|sub|strike|del|kbd)\b[^>]*>", re.IGNORECASE)
_BLOCK = {"p", "div", "blockquote", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "hr"}


def has_html(text: str) -> bool:
    """Whether ``text`` holds HTML tags (of the kinds answers use)."""
    return _HTML_TAG.search(text) is not None


class _ToText(html.parser.HTMLParser):
    """HTML -> Markdown-ish text: code blocks fenced and verbatim, lists as items, links as text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pre = 0  # depth inside <pre>: text there is code, kept byte for byte
        self.lists: list[list] = []  # stack of [kind, next number]
        self.skip = 0  # depth inside tags whose text is dropped (<script>, <style>)
        self.item_start = False  # just wrote a list marker, no text yet

    def _newlines(self, n: int) -> None:
        tail = "".join(self.out[-4:])
        if not "".join(self.out).strip():
            return  # nothing written yet: no blank lines at the top
        have = len(tail) - len(tail.rstrip("\n"))
        self.out.append("\n" * max(0, n - have))

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag == "pre":
            self._block_start(indent=False)  # code is kept verbatim, so its fence is not indented
            self.out.append("```\n")
            self.pre += 1
        elif tag == "code" and not self.pre:
            self.out.append("`")
        elif tag in ("ul", "ol"):
            self._newlines(1 if self.lists else 2)
            self.lists.append([tag, 1])
        elif tag == "li":
            self._newlines(1)
            indent = "  " * max(0, len(self.lists) - 1)
            if self.lists and self.lists[-1][0] == "ol":
                self.out.append(f"{indent}{self.lists[-1][1]}. ")
                self.lists[-1][1] += 1
            else:
                self.out.append(f"{indent}- ")
            self.item_start = True
        elif tag == "br":
            self.out.append("\n")
        elif tag in _BLOCK:
            self._block_start()
            if tag[0] == "h" and tag[1:].isdigit():
                self.out.append("#" * int(tag[1:]) + " ")
        # <a>, <img> and inline tags add nothing: a link keeps its text, an image has none.

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag == "pre" and self.pre:
            self.pre -= 1
            if not "".join(self.out[-1:]).endswith("\n"):
                self.out.append("\n")
            self.out.append("```")
            self._newlines(2)
        elif tag == "code" and not self.pre:
            self.out.append("`")
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()
            self._newlines(1 if self.lists else 2)
        elif tag in _BLOCK and not self.lists:
            self._newlines(2)

    def _block_start(self, indent: bool = True) -> None:
        """A paragraph, heading or code block begins: a blank line before it, except as the first
        block of a list item (``<li><p>``), which stays on the item's line."""
        if self.item_start and indent:
            return
        if self.lists:
            self._newlines(1)
            self.out.append("  " * len(self.lists) if indent else "")
        else:
            self._newlines(2)

    def handle_data(self, data):
        if self.skip:
            return
        if data.strip():
            self.item_start = False
        if self.pre:
            self.out.append(data)
        else:
            # Outside <pre>, HTML whitespace is layout: runs of it read as one space.
            self.out.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.rstrip() if not line.startswith("    ") else line
                 for line in "".join(self.out).split("\n")]
        text = "\n".join(lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip()


def html_to_text(text: str) -> str:
    """HTML answer -> text with fenced code blocks and ``-``/``1.`` list items; links keep their
    text, images and every other tag go. Entities are decoded (``&lt;`` -> ``<``)."""
    parser = _ToText()
    parser.feed(text)
    parser.close()
    return parser.text()


# Markdown ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~)")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)|!\[[^\]]*\]\[[^\]]*\]")
_INLINE_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?:[^()\s]|\([^()]*\))+(?:\s+\"[^\"]*\")?\)")
_REF_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\[[^\]]*\]")
_REF_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+.*$")
_AUTOLINK = re.compile(r"<(?:https?|ftp)://[^>\s]+>")
# A URL's last character is never sentence punctuation: "see http://x.org." keeps its full stop.
_BARE_URL = re.compile(r"\((?:https?|ftp)://[\w-][^\s)]*\)"
                       r"|\b(?:(?:https?|ftp)://|www\.)[\w-](?:[^\s)\]>]*[^\s)\]>.,;:!?'\"])?", re.IGNORECASE)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def _clean_prose(line: str) -> str:
    """Removes images and links from one line of prose, leaving inline code as it is."""
    parts = _INLINE_CODE.split(line)
    original = list(parts)
    # split() gives [prose, ticks, code, prose, ticks, code, ..., prose].
    for i in range(0, len(parts), 3):
        prose = _IMAGE.sub("", parts[i])
        prose = _INLINE_LINK.sub(r"\1", prose)
        prose = _REF_LINK.sub(r"\1", prose)
        prose = _AUTOLINK.sub("", prose)
        prose, removed = _BARE_URL.subn("", prose)
        # "see http://x.org." leaves "see ."; the removed URL's space should go with it.
        parts[i] = re.sub(r"[ \t]+([.,;:!?])", r"\1", prose) if removed else prose
    if parts == original:
        return line  # nothing removed: keep the line byte for byte
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 1:
            out.append(part + parts[i + 1] + part)
        elif i % 3 == 0:
            out.append(part)
    joined = "".join(out)
    indent = joined[: len(joined) - len(joined.lstrip(" \t"))]  # list nesting: keep it
    return indent + re.sub(r"[ \t]{2,}", " ", joined[len(indent):]) if line.strip() else line


def remove_links(text: str) -> str:
    """Markdown (or plain) text without links, images, reference definitions and bare URLs;
    fenced and indented code blocks and inline code are left untouched."""
    out, fence = [], None
    previous_blank = True
    for line in text.split("\n"):
        match = _FENCE.match(line.lstrip())
        if fence is not None:
            out.append(line)
            if match and line.lstrip().startswith(fence):
                fence = None
        elif match:
            fence = match.group(1)
            out.append(line)
        elif line.startswith(("    ", "\t")) and (previous_blank or (out and out[-1].startswith(("    ", "\t")))):
            out.append(line)  # indented code block (a continuation line follows prose instead)
        elif _REF_DEFINITION.match(line):
            continue
        else:
            cleaned = _clean_prose(line)
            out.append(line if cleaned == line else cleaned.rstrip() if cleaned.strip() else "")
        previous_blank = not line.strip()
    joined = "\n".join(out)
    if joined == text:
        return text  # nothing removed: leave the author's layout alone
    return re.sub(r"\n{3,}", "\n\n", joined).strip()


def strip_code(text: str) -> str:
    """The prose of a Markdown text: fenced blocks, indented blocks and inline code removed
    (so rules about the writing are not tripped by identifiers like ``I`` or ``my_var``)."""
    out, fence = [], None
    for line in text.split("\n"):
        match = _FENCE.match(line.lstrip())
        if fence is not None:
            if match and line.lstrip().startswith(fence):
                fence = None
            continue
        if match:
            fence = match.group(1)
            continue
        if line.startswith(("    ", "\t")):
            continue
        out.append(_INLINE_CODE.sub(" ", line))
    return "\n".join(out)


def clean_answer(text: str) -> str:
    """An answer (HTML or Markdown) as LIMA trains on it: no links, images or HTML; code and lists
    kept."""
    if has_html(text):
        text = html_to_text(text)
    return remove_links(text)
