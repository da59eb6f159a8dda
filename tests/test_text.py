"""The shared title tokenizer: GloVe-style splitting, and importable without torch."""

import ast
import gzip
import subprocess
import sys
from collections import Counter

import pytest

from marn.data.text import tokenize


@pytest.mark.parametrize(
    "title, tokens",
    [
        ("Don't Drink His Blood", ["do", "n't", "drink", "his", "blood"]),
        ("Can't Stop (2 CD)", ["ca", "n't", "stop", "(", "2", "cd", ")"]),
        ("The Artist's Greatest Hits, Vol. 1", ["the", "artist", "'s", "greatest", "hits", ",", "vol", ".", "1"]),
        ("Live at the U.S. Arena: 1,000 Nights", ["live", "at", "the", "u.s.", "arena", ":", "1,000", "nights"]),
        ("Hip-Hop &amp; R&B 3.5", ["hip-hop", "&", "r&b", "3.5"]),
        ("O'Brien sings D'Angelo", ["o'brien", "sings", "d'angelo"]),
        ("Wait... \u201cYes\u201d \u2014 it\u2019s", ["wait", "...", '"', "yes", '"', "--", "it", "'s"]),
        ("Beyonc\u00e9 LIVE", ["beyonc\u00e9", "live"]),
        ("I'd say you've", ["i", "'d", "say", "you", "'ve"]),
    ],
)
def test_tokenize_splits_like_glove(title, tokens):
    assert tokenize(title) == tokens


@pytest.mark.parametrize("title", [None, "", "   "])
def test_tokenize_blank_title_gives_no_tokens(title):
    assert tokenize(title) == []


def test_tokenizer_imports_without_torch():
    code = "import sys, marn.data.text; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digital_music_titles_are_mostly_in_glove(shared_data):
    """Real titles against real GloVe 6B words (the 50-d sample holds the alphanumeric title words it knows)."""
    meta = shared_data / "amazon2014-digital-music-head" / "meta_Digital_Music.matched382.json.gz"
    glove = shared_data / "glove" / "glove6B-50d-fixture-vocab" / "glove.6B.50d.fixture-vocab.txt.gz"
    with gzip.open(glove, "rt", encoding="utf-8") as lines:
        glove_words = {line.split(" ", 1)[0] for line in lines}
    with gzip.open(meta, "rt", encoding="utf-8") as lines:
        counts = Counter(token for line in lines for token in tokenize(ast.literal_eval(line).get("title")))
    # The sample kept only alphanumeric words, so punctuation tokens are left out of the rate.
    words = {word: n for word, n in counts.items() if word.isalnum()}
    oov = sum(n for word, n in words.items() if word not in glove_words)
    assert sum(words.values()) > 1000
    assert oov / sum(words.values()) < 0.05
