"""Building the LLM and the knowledge base a :class:`~tools.settings.Settings` describes."""

from __future__ import annotations

from typing import Any

from tools.builtins import default_registry
from tools.registry import ToolRegistry
from tools.settings import Settings
from vm.errors import BackendUnavailable

__all__ = [
    "LazyKnowledgeBase",
    "knowledge_base_missing",
    "make_knowledge_base",
    "make_llm",
    "make_llms",
    "make_registry",
    "query_embedder",
]

#: The built-in tools that read the knowledge base.
RETRIEVAL_TOOLS = frozenset({"vector_search", "retrieve_knowledge_graph"})


def make_llm(settings: Settings, setting_names: dict[str, str] | None = None) -> Any:
    """The LLM backend: ``openai``, ``local`` or the offline ``extractive`` baseline.
    ``setting_names``: the variables that set its deadlines, max tokens and key (for hints)."""
    backend = settings.chosen_llm_backend()
    if backend == "openai":
        if not settings.llm_model:
            raise BackendUnavailable("the openai backend needs a model name: set PLANVM_LLM_MODEL")
        from tools.llm_openai import OpenAIChat

        return OpenAIChat(
            model=settings.llm_model,
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            timeout=settings.llm_timeout,
            idle_timeout=settings.llm_idle_timeout,
            max_retries=settings.llm_max_retries,
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
            json_mode=settings.llm_json_mode,
            setting_names=setting_names,
        )
    if backend == "local":
        if not settings.local_model:
            raise BackendUnavailable("the local backend needs a model: set PLANVM_LOCAL_MODEL to a model folder")
        from tools.llm_local import LocalChat

        return LocalChat(
            settings.local_model,
            adapter=settings.local_adapter,
            device=settings.local_device,
            max_new_tokens=settings.llm_max_tokens or 1024,
            temperature=settings.llm_temperature,
        )
    from tools.llm_extractive import ExtractiveBackend

    return ExtractiveBackend(query_embedder(settings))


def make_llms(settings: Settings, roles: tuple[str, ...] = ("planner", "answer", "condition")) -> dict[str, Any]:
    """One LLM per model role; roles whose settings are the same share one client."""
    made: dict[tuple[Any, ...], Any] = {}
    llms = {}
    for role in roles:
        key = settings.role_key(role)
        if key not in made:
            own = getattr(settings, role).model_dump(exclude_none=True) if hasattr(settings, role) else {}
            names = {name: f"PLANVM_{role.upper()}_{name.upper()}" for name in ("timeout", "idle_timeout", "max_tokens", "api_key")
                     if name in own}
            made[key] = make_llm(settings.for_role(role), names)
        llms[role] = made[key]
    return llms


def query_embedder(settings: Settings) -> Any:
    """The embedder for queries and extracted answers: the knowledge base's ONNX export when it
    has one (loads in a fraction of a second, no torch), else the sentence-transformers model."""
    from tools.kb.embedding import Embedder

    if settings.kb_backend == "local":
        from tools.kb.onnx_embedding import embedder_for

        return embedder_for(settings.kb_path(), settings.embedding_model)
    return Embedder(settings.embedding_model)


class LazyKnowledgeBase:
    """Opens the configured knowledge base on first use, so plans without retrieval never need one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kb: Any = None

    def _open(self) -> Any:
        if self._kb is None:
            self._kb = make_knowledge_base(self.settings)
        return self._kb

    def search(self, query: str, top_k: int) -> list[dict[str, Any]]:
        return self._open().search(query, top_k)

    def graph(self, query: str) -> dict[str, Any]:
        return self._open().graph(query)


def make_knowledge_base(settings: Settings) -> Any:
    if settings.kb_backend == "remote":
        if not settings.remote_url:
            raise BackendUnavailable("the remote knowledge base needs PLANVM_REMOTE_URL")
        from tools.kb.remote import RemoteKnowledgeBase

        return RemoteKnowledgeBase(
            settings.remote_url,
            token=settings.remote_token.get_secret_value() if settings.remote_token else None,
            kb_id=settings.remote_kb_id,
            chat_engine=settings.remote_chat_engine,
            timeout=settings.remote_timeout,
        )
    from tools.kb.embedding import Embedder
    from tools.kb.local import LocalKnowledgeBase

    return LocalKnowledgeBase(settings.kb_path(), embedder=Embedder(settings.embedding_model) if settings.embedding_model else None)


def knowledge_base_missing(settings: Settings) -> str | None:
    """Why the configured embedded knowledge base cannot be opened (None when it can, or when it
    is remote): said before a run starts, instead of by its first retrieval step."""
    if settings.kb_backend == "remote":
        return None
    from tools.kb.local import has_version

    path = settings.kb_path()
    if has_version(path):
        return None
    return f"no knowledge base at {path}; build one with `planvm index DIR` (or pass --kb FOLDER, or set PLANVM_KB)"


def make_registry(settings: Settings) -> ToolRegistry:
    """The built-in tools, retrieval served by the configured knowledge base."""
    return default_registry(LazyKnowledgeBase(settings))
