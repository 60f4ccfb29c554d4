"""planner.stream: each instruction of a streamed reply as soon as its JSON object closes, whatever
the pieces the reply comes in."""

from __future__ import annotations

import json

import pytest

from planner.planner import parse_reply
from planner.stream import PlanStream

PLAN = [
    {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "search", "tool_params": {"query": "a \"quoted\" {brace} ]"},
                                                      "output_vars": ["a"]}},
    {"seq_no": 1, "type": "assign", "parameters": {"b": ["x", {"y": "}"}], "c": "back\\slash"}},
    {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "${a} ${b}"}},
]
ARRAY = json.dumps(PLAN, indent=1)
REPLIES = {
    "think and fence": f"<think>Three steps [a list] {{x}}</think>\nHere is the plan [final]:\n```json\n{ARRAY}\n```",
    "schema object": json.dumps({"plan": PLAN}),
    "answer tag": f"<think>r</think><answer>{ARRAY}</answer>",
    "bare, compact": json.dumps(PLAN, separators=(",", ":")),
    "unicode": json.dumps(PLAN + [{"seq_no": 3, "type": "assign", "parameters": {"é": "ü ☃"}}], ensure_ascii=False),
}


def read(pieces: list[str]) -> list[tuple[int, object]]:
    """(characters fed so far, instruction) for each instruction, as it came out."""
    stream, fed, out = PlanStream(), 0, []
    for piece in pieces:
        fed += len(piece)
        out.extend((fed, data) for data in stream.feed(piece))
    return out


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_every_split_point_gives_the_plan_the_whole_reply_holds(name):
    reply = REPLIES[name]
    expected = parse_reply(reply)[1]
    for cut in range(len(reply) + 1):
        got = [data for _, data in read([reply[:cut], reply[cut:]])]
        assert got == expected, (name, cut)


def test_one_character_at_a_time_each_instruction_comes_out_when_its_brace_closes():
    reply = REPLIES["think and fence"]
    decoder, ends = json.JSONDecoder(), []
    at = reply.index("```json\n[") + len("```json\n[")
    while reply[at] != "]":
        if reply[at] in " \n,":
            at += 1
            continue
        _data, at = decoder.raw_decode(reply, at)
        ends.append(at)  # just after the object's closing brace
    out = read(list(reply))
    assert [data for _, data in out] == PLAN
    assert [fed for fed, _ in out] == ends


def test_nothing_while_the_reasoning_is_open_even_when_it_holds_json():
    stream = PlanStream()
    assert stream.feed('<think>maybe [{"seq_no": 0, "type": "assign", "parameters": {"x": 1}}]') == []
    assert stream.feed(' hmm </thi') == []
    got = stream.feed('nk>[{"seq_no": 5, "type": "assign", "parameters": {"final_answer": 1}}]')
    assert got == [{"seq_no": 5, "type": "assign", "parameters": {"final_answer": 1}}]


def test_a_reply_it_cannot_follow_stops_it_quietly():
    assert PlanStream().feed('[{"seq_no": 0}, 7, {"seq_no": 1}]') == [{"seq_no": 0}]
    assert PlanStream().feed('[{"seq_no": 0, "x": tru}, {"seq_no": 1}]') == []  # not JSON
    stream = PlanStream()
    assert stream.feed("no plan here [1, 2] at all") == []
    assert stream.feed(' [{"seq_no": 3}]') == [{"seq_no": 3}]  # the first '[' that opens an object


def test_a_local_model_under_constrained_decoding_streams_its_plan(tiny_model):
    from planner.constrained import ConstrainedLocal
    from planner.planner import plan_schema_for
    from tools import default_registry
    from tools.llm_local import LocalChat

    llm = ConstrainedLocal(LocalChat(str(tiny_model), max_new_tokens=32), max_think_tokens=16, max_plan_tokens=4000, max_steps=4,
                           max_text=40)
    pieces: list[str] = []
    reply = llm.stream("What is planvm?", on_delta=pieces.append, plan_schema=plan_schema_for(default_registry()))
    plan = parse_reply(f"<think>{reply.reasoning}</think>\n{reply.text}")[1]
    out = read(pieces)
    assert [data for _, data in out] == plan and plan
    assert len(pieces) > 2 and out[0][0] < sum(map(len, pieces))  # token by token: the first instruction before the end
