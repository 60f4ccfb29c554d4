"""The knowledge graph: entities and relationships, extracted per chunk, merged by name.

Two extractors fill it:

* ``LLMExtractor`` asks the configured LLM for entities and relationships of each chunk (prompt in
  ``tools/prompts/kg_extraction.md``), with the reply validated against a schema;
* ``CooccurrenceExtractor`` needs no model: named terms (runs of capitalised words such as
  ``TiDB Cloud``, ``code`` spans, identifiers such as ``final_answer``) that appear in one sentence
  are related, and that sentence describes the relation.

Entities are de-duplicated by normalised name (case, quotes, spaces). A graph can also be imported
from JSON in the shape retrieval returns.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from vm.jsontext import extract_json

__all__ = ["CooccurrenceExtractor", "Graph", "GraphData", "LLMExtractor", "normalise"]

log = logging.getLogger("planvm.kb")


class EntityModel(BaseModel):
    name: str = Field(min_length=1)
    description: str = ""


class RelationshipModel(BaseModel):
    source_entity: str = Field(min_length=1)
    target_entity: str = Field(min_length=1)
    relationship: str = Field(min_length=1)


class GraphData(BaseModel):
    """The graph's JSON shape (what retrieval returns and `planvm kg import` reads)."""

    entities: list[EntityModel] = Field(default_factory=list)
    relationships: list[RelationshipModel] = Field(default_factory=list)


def normalise(name: str) -> str:
    """The key two names must share to be one entity."""
    name = name.strip().strip("`'\"“”‘’.,;:!? \t\n")
    return re.sub(r"\s+", " ", name).casefold()


@dataclass
class Graph:
    """Entities by normalised name, and relationships (deduplicated) between them."""

    names: dict[str, str] = field(default_factory=dict)  # key -> display name (first seen)
    descriptions: dict[str, str] = field(default_factory=dict)
    relationships: list[tuple[str, str, str]] = field(default_factory=list)  # (source key, target key, text)
    _seen: set[tuple[str, str, str]] = field(default_factory=set)

    def add_entity(self, name: str, description: str = "") -> str:
        key = normalise(name)
        if not key:
            return key
        self.names.setdefault(key, name.strip().strip("`"))
        if description and not self.descriptions.get(key):
            self.descriptions[key] = description.strip()
        return key

    def add_relationship(self, source: str, target: str, text: str) -> None:
        s, t = self.add_entity(source), self.add_entity(target)
        item = (s, t, " ".join(text.split()))
        if s and t and s != t and item not in self._seen:
            self._seen.add(item)
            self.relationships.append(item)

    def merge(self, data: GraphData) -> None:
        for e in data.entities:
            self.add_entity(e.name, e.description)
        for r in data.relationships:
            self.add_relationship(r.source_entity, r.target_entity, r.relationship)

    def to_data(self) -> GraphData:
        return GraphData(
            entities=[EntityModel(name=self.names[k], description=self.descriptions.get(k, "")) for k in self.names],
            relationships=[
                RelationshipModel(source_entity=self.names[s], target_entity=self.names[t], relationship=text)
                for s, t, text in self.relationships
            ],
        )

    def relationship_texts(self) -> list[str]:
        """Each relationship as one line of text: both names and the relation (its identity in
        the embedding cache of :func:`relationship_vectors`)."""
        return [f"{self.names[s]} — {self.names[t]}: {text}" for s, t, text in self.relationships]

    def relationship_vectors(self, encode: Any, known: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> Any:
        """A unit vector per relationship: the vector of its relation text plus half of each of
        its two entities' name vectors, normalised.

        The relation text's vector is taken from ``context`` when it is there (the co-occurrence
        extractor relates the named terms of a sentence with that sentence, so the vector of the
        chunk holding the sentence stands for it: no second pass over the corpus), and embedded
        otherwise (LLM-written or imported relations), each distinct text and name once. ``known``
        maps :meth:`relationship_texts` entries to vectors a previous build made; those are reused.
        """
        import numpy as np

        keys = self.relationship_texts()
        known = known or {}
        context = context or {}
        todo = [i for i, key in enumerate(keys) if key not in known]
        texts = sorted({self.relationships[i][2] for i in todo} - context.keys())
        names = sorted({self.names[k] for i in todo for k in self.relationships[i][:2]})
        vectors = encode(texts + names)
        text_vec = {**context, **dict(zip(texts, vectors[: len(texts)], strict=True))}
        name_vec = dict(zip(names, vectors[len(texts) :], strict=True))
        dimension = vectors.shape[1]
        out = np.zeros((len(keys), dimension), dtype=np.float32)
        for i, key in enumerate(keys):
            if key in known:
                out[i] = known[key]
                continue
            s, t, text = self.relationships[i]
            v = text_vec[text] + 0.5 * (name_vec[self.names[s]] + name_vec[self.names[t]])
            out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out

    def neighbourhood(self, ranked: list[int], *, seeds: int = 8, max_relationships: int = 20, max_entities: int = 30) -> dict[str, Any]:
        """The ``seeds`` best relationships plus one hop from their entities, bounded in size.

        ``ranked`` lists relationship indexes, most similar to the query first.
        """
        chosen: list[int] = list(ranked[:seeds])
        hub = {key for i in chosen for key in self.relationships[i][:2]}
        for i in ranked[seeds:]:
            if len(chosen) >= max_relationships:
                break
            s, t, _ = self.relationships[i]
            if s in hub or t in hub:
                chosen.append(i)
        entities: list[str] = []
        for i in chosen:
            for key in self.relationships[i][:2]:
                if key not in entities:
                    entities.append(key)
        entities = entities[:max_entities]
        kept = set(entities)
        return {
            "entities": [{"name": self.names[k], "description": self.descriptions.get(k, "")} for k in entities],
            "relationships": [
                {"source_entity": self.names[s], "target_entity": self.names[t], "relationship": text}
                for s, t, text in (self.relationships[i] for i in chosen)
                if s in kept and t in kept
            ],
        }


# --- extractors ----------------------------------------------------------------------------------

_SENTENCES = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")
_TERM = re.compile(
    r"`(?P<code>[^`\n]{2,60})`"
    r"|(?P<ident>\b[A-Za-z]+(?:_[A-Za-z0-9]+)+\b)"
    r"|(?P<name>\b[A-Z][\w.-]*[A-Za-z0-9](?:\s+[A-Z][\w.-]*[A-Za-z0-9])*)"
)
# Capitalised words that start sentences or titles but name nothing.
_COMMON = set(
    "a an the this that these those it its if when then there here what which who how why where "
    "each every all any some no not and or but for with in on at to of by from as is are was be "
    "use see note run runs step steps".split()
)


class CooccurrenceExtractor:
    """Named terms that appear in one sentence are related; the sentence is the relation."""

    max_terms_per_sentence = 5

    def extract(self, text: str, source: str = "") -> GraphData:
        data = GraphData()
        seen_desc: set[str] = set()
        for match in _SENTENCES.finditer(text):
            sentence = " ".join(match.group().split())
            if len(sentence) < 8:
                continue
            terms: list[str] = []
            for term in _TERM.finditer(sentence):
                kind = term.lastgroup
                value = term.group(kind or 0).strip()
                if kind == "code" and ("$" in value or len(value.split()) > 4):
                    continue  # a code span holding an expression or a command line names nothing
                if kind == "name":
                    words = value.split()
                    at_start = term.start() == 0 or sentence[: term.start()].rstrip().endswith((":", "-", "#"))
                    while words and words[0].casefold() in _COMMON:
                        words.pop(0)
                    if not words or (at_start and len(words) == 1 and term.start() == 0 and value == words[0]):
                        continue  # a lone capitalised word opening a sentence names nothing
                    value = " ".join(words)
                if normalise(value) and normalise(value) not in (normalise(t) for t in terms):
                    terms.append(value)
            terms = terms[: self.max_terms_per_sentence]
            description = sentence[:300]
            for term in terms:
                key = normalise(term)
                if key not in seen_desc:
                    seen_desc.add(key)
                    data.entities.append(EntityModel(name=term, description=description))
            for a, b in itertools.combinations(terms, 2):
                data.relationships.append(RelationshipModel(source_entity=a, target_entity=b, relationship=description))
        return data


_SCHEMA = GraphData.model_json_schema()


class LLMExtractor:
    """Entities and relationships of a chunk, as the LLM reads them; replies are validated."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        template = resources.files("tools.prompts").joinpath("kg_extraction.md").read_text(encoding="utf-8")
        self._template = template

    def prompt(self, text: str, source: str) -> str:
        from jinja2 import Environment, StrictUndefined

        return Environment(undefined=StrictUndefined).from_string(self._template).render(passage=text, source=source or "a document")

    def extract(self, text: str, source: str = "") -> GraphData:
        from vm.llm import as_completion

        reply = as_completion(self.llm.complete(self.prompt(text, source), json_schema=_SCHEMA))
        try:
            return GraphData.model_validate(extract_json(reply.text, (dict,)))
        except (ValueError, ValidationError) as exc:
            log.warning("skipped the graph of one chunk of %s: the LLM's reply was not the expected JSON (%s)", source, str(exc)[:120])
            return GraphData()
