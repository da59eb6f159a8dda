"""The title tokenizer shared by the prepare stage (`title_tokens`) and the features stage.

GloVe's vocabularies were built from Stanford-tokenized, lower-cased text, so titles are split the same
way: punctuation marks are tokens of their own, clitics are split off ("don't" -> "do", "n't";
"artist's" -> "artist", "'s"), while decimal numbers (3.5, 1,000), hyphenated words (hip-hop), words
with inner ampersands (r&b) or apostrophes (o'brien) and dotted abbreviations (u.s.) stay whole.
Only the standard library is imported here.
"""

from __future__ import annotations

import html
import re
import unicodedata

_CLITICS = r"'(?:s|re|ve|ll|d|m)(?![^\W_])"
_TOKEN = re.compile(
    rf"""
      \.\.\. | --                              # an ellipsis or a double dash is one token
    | (?:[^\W\d_]\.){{2,}}                      # dotted abbreviations: u.s., d.j.
    | \d+(?:[.,:]\d+)+                         # numbers with separators: 3.5, 1,000, 10:30
    | n't | {_CLITICS}                         # clitics split off the word before them
    | [^\W_]+(?:[-&][^\W_]+|'(?!(?:s|re|ve|ll|d|m)(?![^\W_]))[^\W_]+)*   # words: hip-hop, r&b, o'brien
    | \S                                       # any other character is a token of its own
    """,
    re.VERBOSE,
)
_NEGATION = re.compile(r"(?<=[^\W_])n't(?![^\W_])")
# Typographic quotes and dashes are folded to the ASCII marks GloVe's vocabulary uses.
_ASCII_PUNCTUATION = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "--"}
)


def tokenize(title: str | None) -> list[str]:
    """Split a product title into lower-case GloVe-style tokens; None or a blank title gives []."""
    if not title:
        return []
    text = unicodedata.normalize("NFC", html.unescape(str(title))).translate(_ASCII_PUNCTUATION).lower()
    return _TOKEN.findall(_NEGATION.sub(" n't", text))
