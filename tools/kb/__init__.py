"""Knowledge bases for the retrieval tools: the embedded one on local disk, and a remote service."""

from tools.kb.embedding import DEFAULT_MODEL, Embedder
from tools.kb.local import IndexReport, LocalKnowledgeBase, import_graph, index_folder

__all__ = ["DEFAULT_MODEL", "Embedder", "IndexReport", "LocalKnowledgeBase", "import_graph", "index_folder"]
