"""Word matching beside the embeddings: a BM25 index of a knowledge base's chunks.

The embedding model reads meaning but blurs identifiers (``--secret-field-selector``,
``__address__``) and rare words; BM25 over the chunks' content words (:func:`tools.kb.evidence.terms`:
lower case, stemmed, identifiers as themselves and as their parts) finds them. The index is built in
memory from the chunks the first time a knowledge base is searched. It also tells which words of a
query no chunk holds at all (``absent``): a question about "k3s" over documents that never name it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LexicalIndex", "fuse"]

K1 = 1.2
B = 0.75
#: Reciprocal-rank fusion constant: a hit ranked r by one retriever adds 1 / (RRF_K + r).
RRF_K = 60


class LexicalIndex:
    """BM25 (the ``bm25s`` library's, over this knowledge base's own terms) of texts, each a
    chunk's heading path and content."""

    def __init__(self, texts: Iterable[str]) -> None:
        import logging

        import bm25s

        from tools.kb.evidence import terms

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG on import: no "Building index" lines

        self._terms = terms
        tokenized = [terms(text) for text in texts]
        self.size = len(tokenized)
        self.vocabulary = {term for tokens in tokenized for term in tokens}
        self._bm25 = bm25s.BM25(k1=K1, b=B)
        if self.vocabulary:
            self._bm25.index(tokenized, show_progress=False)

    def query_terms(self, query: str) -> list[str]:
        """The query's terms that some text holds (each once)."""
        return [term for term in dict.fromkeys(self._terms(query)) if term in self.vocabulary]

    def absent(self, query: str) -> list[str]:
        """The query's content words, as written, that no text holds (in none of their forms)."""
        from tools.kb.evidence import words

        out = []
        for word in words(query):
            found = self._terms(word)
            if found and not any(t in self.vocabulary for t in found) and word not in out:
                out.append(word)
        return out

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (text index, score) of the texts holding a word of the query, best first."""
        wanted = self.query_terms(query)
        if not wanted or k <= 0:
            return []
        scores = self._bm25.get_scores(wanted)
        held = [(i, float(scores[i])) for i in scores.nonzero()[0]]
        return sorted(held, key=lambda kv: (-kv[1], kv[0]))[:k]


def fuse(rankings: list[list[int]], k: int) -> list[int]:
    """Reciprocal-rank fusion of several rankings (ids, best first): the ``k`` best ids."""
    total: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking):
            total[i] = total.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
    return [i for i, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]

