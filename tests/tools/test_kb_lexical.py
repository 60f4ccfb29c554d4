"""BM25 beside the embeddings, and the words of a question that a knowledge base holds nowhere."""

from __future__ import annotations

import numpy as np
from conftest import EXAMPLES

from tools.kb import LocalKnowledgeBase, index_folder
from tools.kb.evidence import FEATURES, Passage, absent_of, featurize
from tools.kb.lexical import LexicalIndex, fuse

TEXTS = [
    "Restarting a cluster\n\nRun the restart command and wait for the pods.",
    "Flags\n\nUse `--secret-field-selector` to watch only some secrets.",
    "Storage\n\nData is kept in an emptyDir volume by default.",
]


def test_bm25_finds_an_identifier_by_its_parts_and_whole():
    index = LexicalIndex(TEXTS)
    assert index.search("which flag limits the secrets watched", 1)[0][0] == 1
    assert index.search("--secret-field-selector", 3)[0][0] == 1
    assert index.search("emptyDir default", 3)[0][0] == 2
    assert index.search("kubernetes", 3) == []


def test_absent_words_are_those_no_text_holds_in_any_form():
    index = LexicalIndex(TEXTS)
    assert index.absent("How do I restart clusters on k3s with Terraform?") == ["k3s", "Terraform"]
    assert index.absent("Which secrets are watched?") == []  # "watched" is "watch" stemmed


def test_fusion_rewards_agreement_of_the_rankings():
    assert fuse([[5, 1], [1, 7]], 2)[0] == 1
    assert fuse([[1, 2, 3]], 2) == [1, 2]


class _Flat:
    def encode(self, texts):
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_absent_names_and_words_become_features():
    passages = [Passage("Run the restart command.", "a.md", "Restart", 0, 0.5)]
    none = featurize("How do I restart on k3s?", passages, _Flat(), absent=[])
    name = featurize("How do I restart on k3s?", passages, _Flat(), absent=["k3s"])
    word = featurize("How do I reboot it?", passages, _Flat(), absent=["reboot"])
    a, n = FEATURES.index("absent"), FEATURES.index("absent_name")
    assert none[0, a] == 0 and none[0, n] == 0
    assert name[0, a] > 0 and name[0, n] == 1
    assert word[0, a] > 0 and word[0, n] == 0  # a lower-case word: a rewording, not a name
    assert absent_of([{"content": "x"}, {"content": "y", "absent": ["k3s"]}]) == ["k3s"]


def test_search_fuses_bm25_and_reports_absent_words(tmp_path):
    kb_path = tmp_path / "kb"
    index_folder(EXAMPLES / "kb", kb_path, extractor=None)
    kb = LocalKnowledgeBase(kb_path)
    hits = kb.search("How do I resume a run with Zookeeper?", top_k=3)
    assert len(hits) == 3 and all(h["absent"] == ["Zookeeper"] for h in hits)
    assert "absent" not in kb.search("How do I resume a run?", top_k=3)[0]
    assert kb.lexical() is kb.lexical() and kb.lexical().size == kb.size
