"""Indexing throughput: a whole `planvm index` against the embedder alone, and many small files.

    python bench/index.py                 # the operator-docs-sized corpus and 10,000 small files
    python bench/index.py --pages 40 --small 2000

The corpus is generated here (no download): `--pages` Markdown pages of operator documentation
(headings, paragraphs, lists, code spans, capitalised product and component names), about eight
chunks a page, like a real operator's docs (140 pages, ~1,200 chunks). Printed:

* the whole index (exporting the model to ONNX, reading, chunking, embedding, co-occurrence
  graph, writing), peak memory included,
* the embedder the index used, alone, on the same chunks (the floor), and the ratio,
* `--small` files of a few lines each, indexed from scratch.
The embedding model is loaded before any timing starts.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMPONENTS = [
    "TiDB", "TiKV", "PD", "TiFlash", "TiCDC", "TiProxy", "Pump", "Drainer", "Backup & Restore", "Dumpling",
    "TiDB Lightning", "Prometheus", "Grafana", "Kubernetes", "Helm", "StatefulSet", "PersistentVolume",
    "TidbCluster", "TidbMonitor", "TidbInitializer", "Backup", "Restore", "BackupSchedule", "Operator",
    "Advanced StatefulSet", "Scheduler", "Webhook", "Service", "Ingress", "ConfigMap", "Secret",
]
VERBS = ["deploys", "scales", "monitors", "backs up", "restores", "upgrades", "configures", "replicates to",
         "reads from", "writes to", "depends on", "schedules", "exposes", "stores data in", "watches"]
NOUNS = ["the cluster", "each replica", "the storage class", "the region leader", "a rolling update",
         "the configuration file", "the admin password", "the metrics endpoint", "the load balancer",
         "a persistent volume claim", "the snapshot", "the log backup", "the placement rules", "the namespace"]
FIELDS = ["spec.replicas", "spec.version", "spec.tikv.storageClassName", "spec.pd.baseImage", "spec.tidb.service.type",
          "spec.backupType", "spec.br.cluster", "spec.timezone", "spec.enableDynamicConfiguration"]


def sentence(rng: random.Random) -> str:
    a, b = rng.sample(COMPONENTS, 2)
    kind = rng.random()
    if kind < 0.4:
        return f"{a} {rng.choice(VERBS)} {rng.choice(NOUNS)} when {b} {rng.choice(VERBS)} {rng.choice(NOUNS)}."
    if kind < 0.7:
        return f"Set `{rng.choice(FIELDS)}` so that {a} {rng.choice(VERBS)} {rng.choice(NOUNS)}."
    return f"The {rng.choice(NOUNS)[4:]} of {a} is kept until {b} {rng.choice(VERBS)} {rng.choice(NOUNS)}."


def page(rng: random.Random, index: int) -> str:
    lines = [f"# {rng.choice(COMPONENTS)} guide {index}", ""]
    for section in range(rng.randint(4, 7)):
        lines += [f"## {rng.choice(VERBS).capitalize()} {rng.choice(COMPONENTS)} ({section})", ""]
        for _ in range(rng.randint(2, 3)):
            lines += [" ".join(sentence(rng) for _ in range(rng.randint(3, 6))), ""]
        if rng.random() < 0.4:
            lines += [f"- {sentence(rng)}" for _ in range(3)] + [""]
    return "\n".join(lines)


def make_corpus(folder: Path, pages: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for i in range(pages):
        sub = folder / f"section{i % 12}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"page{i:03d}.md").write_text(page(rng, i), encoding="utf-8")


def make_small_files(folder: Path, count: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    for i in range(count):
        sub = folder / f"d{i // 500}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"note{i:05d}.md").write_text(f"# Note {i}\n\n{sentence(rng)}\n", encoding="utf-8")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=140)
    parser.add_argument("--small", type=int, default=10_000, help="small files to index (0: skip)")
    args = parser.parse_args()

    from tools.kb import Embedder, index_folder
    from tools.kb.documents import chunk_document, find_documents, read_document
    from tools.kb.local import ByLengthEmbedder
    from tools.kb.onnx_embedding import load_exported

    embedder = Embedder()
    embedder.encode(["warm up"])  # the model's loading is not timed
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        make_corpus(docs, args.pages)
        started = time.perf_counter()
        report = index_folder(docs, Path(tmp) / "kb", embedder=embedder)
        whole = time.perf_counter() - started
        # The floor: the embedders the index used (short texts by the ONNX export, long ones by
        # sentence-transformers), on the chunks the index made.
        exported = load_exported(Path(tmp) / "kb", embedder.model_name)
        used = ByLengthEmbedder(embedder, exported) if exported is not None else embedder
        texts = []
        for path in find_documents(docs):
            doc = read_document(path, path.relative_to(docs).as_posix())
            texts += [c.content for c in chunk_document(doc)]
        started = time.perf_counter()
        used.encode(texts)
        floor = time.perf_counter() - started
        print(f"corpus: {args.pages} pages, {len(texts)} chunks; embedding the chunks alone: {floor:.1f} s")
        print(
            f"planvm index: {whole:.1f} s = {whole / floor:.2f}x the embedder alone (ONNX export included); "
            f"{report.chunks} chunks, {report.entities} entities, {report.relationships} relationships; "
            f"peak {peak_mb():.0f} MB",
            flush=True,
        )
        if args.small:
            small = Path(tmp) / "small"
            make_small_files(small, args.small)
            started = time.perf_counter()
            report = index_folder(small, Path(tmp) / "kb-small", embedder=embedder)
            print(f"{args.small:,} small files: {time.perf_counter() - started:.1f} s ({report.chunks} chunks, "
                  f"{report.relationships} relationships); peak {peak_mb():.0f} MB", flush=True)


if __name__ == "__main__":
    main()
