"""Title tokenizer consistent with GloVe's vocabulary: lower case, punctuation split off as tokens."""

from __future__ import annotations

import html
import re

# Words keep inner apostrophes' clitics split the way GloVe's tokenizer did ("don't" -> "do", "n't").
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[.,][0-9]+)*|[^\sa-z0-9]")
_NEGATION = re.compile(r"(\w)n't\b")


def tokenize(title: str | None) -> list[str]:
    """Split a product title into GloVe-style tokens; None or blank gives []."""
    if not title:
        return []
    text = html.unescape(str(title)).lower()
    text = _NEGATION.sub(r"\1 n't", text)
    return _TOKEN.findall(text)
