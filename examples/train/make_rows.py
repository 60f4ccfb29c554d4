"""Writes train.jsonl and held_out.jsonl: goals about the documents in examples/kb/, with plans.

    python examples/train/make_rows.py

Four plan shapes, as a planner should write them: a direct lookup; two sub-questions looked up
apart and combined; an answer with two named parts (several output_vars); and a lookup that checks
its own results with a conditional jmp and searches again when they fall short. Some rows start
with a reasoning step and number from 1, and some carry metadata as a JSON string, as older data
does; loading normalises both.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

DIRECT = [
    "What is planvm?", "What does the VM do before a plan runs?", "Which tools can a plan call?",
    "What does an assign instruction do?", "How does a calling instruction store its result?",
    "What does a jmp instruction do?", "When does a run end?", "What stops a plan that loops forever?",
    "What does planvm index do?", "How do I search the knowledge base from the command line?",
    "How do I see my recent runs?", "What does planvm replay do?", "How is the planner trained?",
    "What are the default LoRA settings?", "How is a trained adapter judged?", "What is a reasoning instruction for?",
]
TWO_PARTS = [
    ("How do assign and calling instructions differ?", "assign instruction", "calling instruction"),
    ("Compare planvm replay and planvm resume.", "planvm replay", "planvm resume"),
    ("What do planvm index and planvm search each do?", "planvm index", "planvm search"),
    ("How do conditional and unconditional jumps differ?", "jmp with condition_prompt", "jmp with target_seq"),
    ("What happens to runs and to plans in planvm?", "run store records runs", "plan validation before running"),
    ("How do training and evaluation of the planner fit together?", "training the planner", "evaluating an adapter"),
    ("Why use plans instead of free-form agents, and how do tools run?", "why plans", "independent tool calls run at the same time"),
    ("What does a plan contain and how does it end?", "plan instructions seq_no type parameters", "final_answer ends the run"),
    ("How are references and arithmetic written in assign values?", "references to variables", "arithmetic over variables"),
    ("What does the knowledge graph hold and how is it imported?", "knowledge graph entities relationships", "planvm kg import"),
    ("Which parts make up planvm, and what does the planner do?", "parts of planvm", "planner turns a goal into a plan"),
    ("How do output_vars work with one name and with several?", "output_vars one name", "output_vars several names"),
]
TWO_KEYS = [
    ("Summarise what output_vars does and give one pitfall.", "output_vars", ["summary", "pitfall"]),
    ("Explain the step budget and how to change it.", "step budget StepLimitExceeded", ["explanation", "how_to_change"]),
    ("Describe planvm fork and when to use it.", "planvm fork", ["description", "when_to_use"]),
    ("Explain templates in assign and give an example.", "templates with references", ["explanation", "example"]),
    ("What is LoRA in planvm training, and what are its defaults?", "LoRA adapters defaults", ["meaning", "defaults"]),
    ("Describe the run store and what it records.", "run store records every step", ["description", "records"]),
    ("Explain conditional jumps and their reply format.", "condition_prompt jump_if_true", ["explanation", "reply_format"]),
    ("Describe planvm search and its --graph option.", "planvm search --graph", ["description", "graph_option"]),
    ("Explain re-indexing and what it skips.", "running index again embeds only new or changed files", ["explanation", "skipped"]),
    ("Summarise how a plan is validated and name one check.", "validated before it runs", ["summary", "one_check"]),
]
CHECKED = [
    ("Which command continues a run that was killed?", "continue a killed run", "planvm resume RUN_ID"),
    ("What is the default learning rate for training?", "training learning rate", "learning rate 1e-4 linear schedule"),
    ("Which variable name ends a run?", "variable that ends a run", "final_answer"),
    ("What does planvm schema print?", "planvm schema", "JSON Schema of plans command"),
    ("Which library trains on a CPU?", "training on a CPU", "transformers PEFT TRL"),
    ("How are independent tool calls run?", "independent tool calls", "run at the same time result same"),
    ("What does planvm kg import add?", "kg import", "graph made elsewhere"),
    ("What does the reasoning instruction hold?", "reasoning instruction", "chain of thoughts"),
    ("What happens when a plan is forked?", "fork a run", "planvm fork new run edited plan"),
    ("What format does the planner use for the answer?", "planner answer format", "think block then JSON plan"),
]


def lookup(seq, query, graph_var, docs_var, top_k=5):
    return [
        {"seq_no": seq, "type": "calling", "parameters": {"tool_name": "retrieve_knowledge_graph", "tool_params": {"query": query}, "output_vars": [graph_var]}},
        {"seq_no": seq + 1, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": query, "top_k": top_k}, "output_vars": [docs_var]}},
    ]


def generate(seq, prompt, context, outputs):
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": prompt, "context": context}, "output_vars": outputs}}


def direct(goal):
    plan = lookup(0, goal, "graph", "chunks") + [
        generate(2, f"Answer the question '{goal}' in English from the graph and the documents, and name the sources.", {"graph": "${graph}", "documents": "${chunks}"}, ["final_answer"])
    ]
    reasoning = "The goal is one question about planvm. Look it up in the knowledge graph and in the documents, then write the answer in English from both."
    return plan, reasoning


def two_parts(goal, a, b):
    plan = lookup(0, a, "graph_a", "chunks_a") + lookup(2, b, "graph_b", "chunks_b") + [
        generate(4, f"Explain {a} in two sentences.", {"graph": "${graph_a}", "documents": "${chunks_a}"}, ["answer_a"]),
        generate(5, f"Explain {b} in two sentences.", {"graph": "${graph_b}", "documents": "${chunks_b}"}, ["answer_b"]),
        generate(6, f"Using both explanations, answer in English: {goal}", "First: ${answer_a}\nSecond: ${answer_b}", ["final_answer"]),
    ]
    reasoning = f"The goal has two parts: {a} and {b}. Look each up on its own (the lookups do not depend on each other), explain each, then combine the two explanations into one answer in English."
    return plan, reasoning


def two_keys(goal, query, keys):
    plan = [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": query, "top_k": 5}, "output_vars": ["chunks"]}},
        generate(1, f"{goal} Reply with a JSON object with the keys {' and '.join(keys)}, in English.", "${chunks}", keys),
        {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "\n".join(f"{k.replace('_', ' ').capitalize()}: ${{{k}}}" for k in keys)}},
    ]
    reasoning = f"The answer has two named parts ({', '.join(keys)}). Search the documents, ask llm_generate for a JSON object with exactly those keys, then join them into final_answer."
    return plan, reasoning


def checked(goal, first, second):
    plan = [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": first, "top_k": 3}, "output_vars": ["chunks"]}},
        {"seq_no": 1, "type": "jmp", "parameters": {"condition_prompt": f"Do these passages answer the question '{goal}'?", "context": "${chunks}", "jump_if_true": 3, "jump_if_false": 2}},
        {"seq_no": 2, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": second, "top_k": 5}, "output_vars": ["chunks"]}},
        generate(3, f"Answer in English in one sentence: {goal}", "${chunks}", ["final_answer"]),
    ]
    reasoning = "A short factual question. Search once; if the passages do not answer it, search again with more specific words; then answer from whichever passages were found."
    return plan, reasoning


def rows():
    out = []
    items = [("direct", g, direct(g)) for g in DIRECT]
    items += [("parts", g, two_parts(g, a, b)) for g, a, b in TWO_PARTS]
    items += [("keys", g, two_keys(g, q, k)) for g, q, k in TWO_KEYS]
    items += [("checked", g, checked(g, f, s)) for g, f, s in CHECKED]
    for i, (kind, goal, (plan, reasoning)) in enumerate(items):
        metadata = {"response_format": {"Lang": "English", "Background": "planvm documentation"}, "label_path": [{"label": "planvm"}, {"label": kind}]}
        if i % 4 == 1:  # older rows: a leading reasoning step, numbering from 1
            plan = [{"seq_no": 0, "type": "reasoning", "parameters": {"chain_of_thoughts": reasoning}}] + plan
            plan = [{**s, "seq_no": s["seq_no"] + 1} if s["seq_no"] or s["type"] != "reasoning" else s for s in plan]
            for s in plan:
                p = s["parameters"]
                for key in ("target_seq", "jump_if_true", "jump_if_false"):
                    if key in p:
                        p[key] += 1
        row = {"task_id": f"kb-{i:03d}", "goal": goal, "metadata": metadata if i % 3 else json.dumps(metadata), "reasoning": reasoning, "best_plan": json.dumps(plan) if i % 2 else plan}
        out.append(row)
    return out


def main():
    all_rows = rows()
    held = [r for i, r in enumerate(all_rows) if i % 6 == 5]
    train = [r for i, r in enumerate(all_rows) if i % 6 != 5]
    for name, part in (("train.jsonl", train), ("held_out.jsonl", held)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    print(f"{len(train)} training rows, {len(held)} held out")


if __name__ == "__main__":
    main()
