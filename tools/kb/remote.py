"""A client for an autoflow / tidb.ai-style retrieval service (``kb_backend = "remote"``).

* ``POST {url}/api/v1/admin/embedding_retrieve`` with ``{query, chat_engine, top_k}`` returns a
  list of ``{node: {text, metadata}, score}``;
* ``POST {url}/api/v1/admin/knowledge_bases/{kb_id}/graph/search`` with ``{query, include_meta,
  depth, with_degree}`` returns ``{entities, relationships}``.

Results are normalised to the shapes the embedded knowledge base returns. A bearer token comes
from ``PLANVM_REMOTE_TOKEN``; 429 and 5xx answers and timeouts are retried with exponential
backoff and jitter, a bounded number of times.
"""

from __future__ import annotations

import random
import time
from typing import Any

from vm.errors import BackendUnavailable

__all__ = ["RemoteKnowledgeBase"]


class RemoteKnowledgeBase:
    """``search`` and ``graph`` served by a retrieval service over HTTP (a ``tools.KnowledgeBase``)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        kb_id: int | None = None,
        chat_engine: str = "default",
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: Any = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.kb_id = kb_id
        self.chat_engine = chat_engine
        self.max_retries = max_retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (0.75 + random.random() / 4))
            try:
                response = self._client.post(path, json=body)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as exc:
                raise BackendUnavailable(f"cannot reach the retrieval service at {self.url}: {exc}; is it running?") from exc
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                hint = "check PLANVM_REMOTE_TOKEN" if response.status_code in (401, 403) else "check PLANVM_REMOTE_URL and PLANVM_REMOTE_KB_ID"
                raise BackendUnavailable(f"the retrieval service at {self.url}{path} answered HTTP {response.status_code}; {hint}")
            try:
                return response.json()
            except ValueError as exc:
                raise BackendUnavailable(f"the retrieval service at {self.url}{path} sent a reply that is not JSON") from exc
        raise BackendUnavailable(f"the retrieval service at {self.url}{path} failed after {self.max_retries + 1} tries ({last})")

    def search(self, query: str, top_k: int = 10) -> list[dict[str, Any]]:
        data = self._post("/api/v1/admin/embedding_retrieve", {"query": query, "chat_engine": self.chat_engine, "top_k": top_k})
        if not isinstance(data, list):
            raise BackendUnavailable(f"the retrieval service at {self.url} sent {type(data).__name__}, expected a list of chunks")
        chunks = []
        for position, item in enumerate(data):
            node = item.get("node") if isinstance(item, dict) else None
            if not isinstance(node, dict):
                raise BackendUnavailable(
                    f"the retrieval service at {self.url} sent an unexpected chunk at position {position} "
                    f"({type(item).__name__}); each should be {{node: {{text, metadata}}, score}} — is "
                    f"PLANVM_REMOTE_URL an autoflow-style retrieval service?"
                )
            meta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
            source = meta.get("source_uri") or meta.get("uri") or meta.get("source") or meta.get("document_id") or ""
            score = item.get("score")
            chunks.append({
                "content": str(node.get("text") or ""),
                "source_uri": str(source),
                "score": float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else 0.0,
            })
        chunks.sort(key=lambda c: -c["score"])
        return chunks[:top_k]

    def graph(self, query: str) -> dict[str, Any]:
        if self.kb_id is None:
            raise BackendUnavailable("graph search on the retrieval service needs a knowledge-base id: set PLANVM_REMOTE_KB_ID")
        data = self._post(
            f"/api/v1/admin/knowledge_bases/{self.kb_id}/graph/search",
            {"query": query, "include_meta": False, "depth": 2, "with_degree": False},
        )
        if not isinstance(data, dict):
            raise BackendUnavailable(f"the retrieval service at {self.url} sent {type(data).__name__}, expected {{entities, relationships}}")
        entities = data.get("entities") or []
        if not isinstance(entities, list):
            entities = []
        names = {e.get("id"): e.get("name", "") for e in entities if isinstance(e, dict)}

        def name_of(rel: dict[str, Any], side: str) -> str:
            value = rel.get(f"{side}_entity")
            if isinstance(value, dict):
                return str(value.get("name", ""))
            if isinstance(value, str):
                return value
            return str(names.get(rel.get(f"{side}_entity_id"), ""))

        return {
            "entities": [{"name": str(e.get("name", "")), "description": str(e.get("description") or "")} for e in entities if isinstance(e, dict)],
            "relationships": [
                {
                    "source_entity": name_of(r, "source"),
                    "target_entity": name_of(r, "target"),
                    "relationship": str(r.get("relationship") or r.get("description") or ""),
                }
                for r in (data.get("relationships") if isinstance(data.get("relationships"), list) else [])
                if isinstance(r, dict)
            ],
        }
