"""The command line against hostile and unlucky input, through real subprocesses: one clear line
(or one JSON object) and the documented exit code, never a traceback, never a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, assign, call, planvm

EXIT_FAILED, EXIT_UNUSABLE = 1, 2



def no_traceback(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr


def write(path: Path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


SIMPLE = [assign(0, a=2), assign(1, final_answer="${a} * 21")]


# --- values and plans --------------------------------------------------------------------------------


def test_the_doubling_plan_fails_fast_with_a_named_limit(tmp_path):
    plan = [assign(0, s0="x" * 1024)] + [assign(i, **{f"s{i}": "${s%d}${s%d}" % (i - 1, i - 1)}) for i in range(1, 40)]
    plan.append(assign(40, final_answer="${s39}"))
    started = time.monotonic()
    out = planvm("exec", write(tmp_path / "double.json", plan), "--json", "--max-value-bytes", "1000000")
    assert time.monotonic() - started < 30
    assert out.returncode == EXIT_FAILED
    data = json.loads(out.stdout)
    assert data["status"] == "failed" and "max_value_bytes" in data["error"]
    no_traceback(out)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("/dev/zero", "not a regular file"),
        ("n" * 300 + ".json", "File name too long"),
        ("loop", "cannot read"),
        ("deep", "nested"),
        ("nan", "NaN is not JSON"),
    ],
)
def test_unreadable_plans_are_one_line_exit_2(tmp_path, source, words):
    if source == "loop":
        (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
        source = str(tmp_path / "loop.json")
    elif source == "deep":
        source = write(tmp_path / "deep.json", '[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": ' + "[" * 3000 + "]" * 3000 + "}}]")
    elif source == "nan":
        source = write(tmp_path / "nan.json", '[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": NaN}}]')
    for command in ("validate", "exec"):
        out = planvm(command, source, timeout=30)
        assert out.returncode == EXIT_UNUSABLE, out
        assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        no_traceback(out)


def test_json_output_is_strict_json_even_for_nan_results(tmp_path):
    plugin = write(tmp_path / "nan_tool.py", 'from tools import tool\n\n@tool\ndef nan() -> dict:\n    """NaN."""\n    return {"v": float("nan"), "w": float("inf")}\n')
    out = planvm("exec", write(tmp_path / "p.json", [call(0, "nan", "r"), assign(1, final_answer="${r}")]), "--plugin", plugin, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert data["final_answer"] == {"v": "NaN", "w": "Infinity"}


def test_a_goal_that_is_not_utf8_is_run(tmp_path):
    (tmp_path / "kb").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "planvm", "run", b"caf\xe9 au lait?", "--kb", str(tmp_path / "nokb"), "--json"],
        capture_output=True, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert out.returncode == EXIT_UNUSABLE  # no knowledge base: said before planning
    assert b"planvm index" in out.stdout + out.stderr and b"Traceback" not in out.stderr


# --- tools and plugins ----------------------------------------------------------------------------------

EXIT_PLUGIN = '''
import sys, threading, time
from tools import tool

@tool
def quits() -> str:
    """Calls sys.exit."""
    sys.exit(3)

@tool
def leaves_a_thread() -> str:
    """Starts a thread that outlives the run."""
    threading.Thread(target=time.sleep, args=(60,)).start()
    return "done"
'''


def test_a_tool_calling_sys_exit_fails_its_step(tmp_path):
    plugin = write(tmp_path / "exits.py", EXIT_PLUGIN)
    out = planvm("exec", write(tmp_path / "p.json", [call(0, "quits", "r"), assign(1, final_answer="${r}")]), "--plugin", plugin)
    assert out.returncode == EXIT_FAILED
    assert "tool 'quits'" in out.stderr and "sys.exit(3)" in out.stderr
    no_traceback(out)


def test_a_plugin_calling_sys_exit_is_a_plugin_error(tmp_path):
    plugin = write(tmp_path / "bad.py", "import sys\nsys.exit(4)\n")
    out = planvm("exec", write(tmp_path / "p.json", SIMPLE), "--plugin", plugin)
    assert out.returncode == EXIT_UNUSABLE and "plugin" in out.stderr and "sys.exit(4)" in out.stderr


def test_the_cli_exits_when_the_run_ends_despite_a_leftover_thread(tmp_path):
    plugin = write(tmp_path / "exits.py", EXIT_PLUGIN)
    started = time.monotonic()
    out = planvm("exec", write(tmp_path / "p.json", [call(0, "leaves_a_thread", "r"), assign(1, final_answer="${r}")]), "--plugin", plugin, timeout=50)
    assert out.returncode == 0 and out.stdout.strip() == "done"
    assert time.monotonic() - started < 20


# --- the run store ---------------------------------------------------------------------------------------


def in_private_mounts(script: str, *planvm_args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run planvm in a private mount namespace, after ``script`` (mount commands) ran there."""
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "planvm", *planvm_args])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"set -e; {script}; exec {command}"],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
    )


def test_a_read_only_store_file_and_folder(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "runs.sqlite"
    first = planvm("exec", write(tmp_path / "p.json", SIMPLE), "--store", str(db))
    assert first.returncode == 0
    plan = write(tmp_path / "p.json", SIMPLE)
    for target in (db, folder):
        ro = f"mount --bind {target} {target}; mount -o remount,bind,ro {target}"
        listed = in_private_mounts(ro, "runs", "list", "--store", str(db), "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 1
        out = in_private_mounts(ro, "exec", plan, "--store", str(db))
        assert out.returncode == EXIT_UNUSABLE, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and str(db) in lines[0] and ("read" in lines[0] or "writable" in lines[0]), out.stderr
        no_traceback(out)


def test_a_full_disk_names_the_store_and_the_cause(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    db = mount / "runs.sqlite"
    plan = write(tmp_path / "big.json", [assign(0, a="q" * 3_000_000), assign(1, final_answer="${a}")])
    out = in_private_mounts(f"mount -t tmpfs -o size=1m tmpfs {mount}", "exec", plan, "--store", str(db), "--json")
    assert out.returncode == EXIT_UNUSABLE, out
    data = json.loads(out.stdout)
    assert "is full" in data["error"] and str(db) in data["error"]
    assert "no transaction is active" not in data["error"]


def test_a_store_corrupted_midway_is_one_line(tmp_path):
    db = tmp_path / "runs.sqlite"
    assert planvm("exec", write(tmp_path / "p.json", SIMPLE), "--store", str(db)).returncode == 0
    data = bytearray(db.read_bytes())
    half = len(data) // 2
    data[half:] = b"\x00\x13" * ((len(data) - half) // 2) + b"\x00" * ((len(data) - half) % 2)
    db.write_bytes(bytes(data))
    for args in (("runs", "list"), ("exec", write(tmp_path / "p.json", SIMPLE))):
        out = planvm(*args, "--store", str(db))
        assert out.returncode in (EXIT_UNUSABLE, 0), out
        no_traceback(out)
        if out.returncode:
            assert str(db) in out.stderr and len(out.stderr.strip().splitlines()) == 1


# --- run ids ---------------------------------------------------------------------------------------------


def test_whole_ids_prefixes_and_the_plan_file_in_runs_list(tmp_path):
    db = str(tmp_path / "runs.sqlite")
    plan = write(tmp_path / "my_plan.json", SIMPLE)
    out = planvm("exec", plan, "--store", db)
    run_id = out.stderr.split("run_id: ")[1].split()[0]
    assert len(run_id) == 16
    listed = planvm("runs", "list", "--store", db)  # piped: no terminal width
    assert run_id in listed.stdout and "my_plan.json" in listed.stdout
    from tools import ToolRegistry
    from vm import VM, RunStore

    VM(ToolRegistry(), store=RunStore(db)).fork(run_id, 0, json.loads(Path(plan).read_text()))  # a row with a parent
    narrow = planvm("runs", "list", "--store", db, env={"COLUMNS": "80"})
    assert "completed" in narrow.stdout and "complet…" not in narrow.stdout  # statuses are never cut
    for command in (("runs", "show", run_id[:5]), ("replay", run_id[:6]), ("runs", "export", run_id[:4])):
        shown = planvm(*command, "--store", db)
        assert shown.returncode == 0, shown.stderr
        assert run_id in shown.stdout
    missing = planvm("runs", "show", "ffffffff", "--store", db)
    assert missing.returncode == EXIT_UNUSABLE and "no run with id" in missing.stderr


def test_an_ambiguous_prefix_asks_for_more(tmp_path):
    from vm import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    ids = set()
    while len({i[0] for i in ids}) == len(ids):  # until two ids share a first character
        ids.add(store.create_run([assign(0, final_answer=1)]))
    shared = next(c for c in {i[0] for i in ids} if sum(i[0] == c for i in ids) > 1)
    out = planvm("runs", "show", shared, "--store", str(tmp_path / "runs.sqlite"))
    assert out.returncode == EXIT_UNUSABLE and "several run ids" in out.stderr


def test_the_run_id_is_printed_when_the_run_starts(tmp_path):
    plugin = write(tmp_path / "slow.py", 'import time\nfrom tools import tool\n\n@tool\ndef slow() -> str:\n    """Sleeps."""\n    time.sleep(60)\n    return "late"\n')
    db = str(tmp_path / "runs.sqlite")
    proc = subprocess.Popen(
        [sys.executable, "-m", "planvm", "exec", write(tmp_path / "p.json", [call(0, "slow", "r"), assign(1, final_answer="${r}")]),
         "--plugin", plugin, "--store", db],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    try:
        line = proc.stderr.readline()  # printed before the slow step ends
        assert line.startswith("run_id: ")
    finally:
        proc.kill()
        proc.wait()
    run_id = line.split()[1]
    listed = json.loads(planvm("runs", "list", "--store", db, "--json").stdout)
    assert [r["id"] for r in listed] == [run_id]


# --- secrets ---------------------------------------------------------------------------------------------


def test_credentials_are_never_printed_or_stored(tmp_path):
    from fake_openai import FakeChatServer

    from vm import RunStore

    key = "sk-verysecretkey1234567890"
    with FakeChatServer() as server:
        for _ in range(8):  # the SDK retries 5xx: every answer echoes the request's headers
            server.actions.append(("raw", 500, json.dumps({"error": {"message": "boom", "echo": "Authorization: Bearer " + key}})))
        url = server.url.replace("http://", "http://admin:hunter2secret@")
        env = {"PLANVM_LLM_BASE_URL": url, "PLANVM_LLM_MODEL": "m", "PLANVM_LLM_API_KEY": key, "PLANVM_LLM_MAX_RETRIES": "0"}
        db = tmp_path / "runs.sqlite"
        plan = write(tmp_path / "p.json", [call(0, "llm_generate", "r", prompt="hi"), assign(1, final_answer="${r}")])
        out = planvm("exec", plan, "--store", str(db), env=env)
        assert out.returncode == EXIT_FAILED, out.stderr
        for text in (out.stdout, out.stderr):
            assert key not in text and "hunter2secret" not in text
        run = RunStore(db).get(RunStore(db).list_runs()[0]["id"])
        for text in (run.error or "", *(s.error or "" for s in run.steps)):
            assert key not in text and "hunter2secret" not in text
        assert "***" in out.stderr


# --- knowledge base ---------------------------------------------------------------------------------------


def remove_deep_tree(top: str, depth: int) -> None:
    """Remove a chain of folders deeper than Python's recursion limit (shutil.rmtree recurses)."""
    for level in range(depth, 0, -1):
        folder = top + "/d" * level
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def test_indexing_refuses_links_special_files_and_bad_names(tmp_path):
    try:
        check_indexing(tmp_path)
    finally:
        remove_deep_tree(str(tmp_path / "docs"), 1100)


def check_indexing(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nThe lighthouse keeper rings the brass bell at dawn every day.\n")
    (docs / "notes.txt").symlink_to("/etc/passwd")
    (docs / "zero.txt").symlink_to("/dev/zero")
    (docs / "big.txt").write_text("x " * 600)
    os.close(os.open(os.fsencode(docs) + b"/bad\xff.md", os.O_CREAT | os.O_WRONLY))
    deep = str(docs)
    for _ in range(1100):  # deeper than Python's recursion limit (os.makedirs itself recurses)
        deep += "/d"
        os.mkdir(deep)
    deep = Path(deep)
    (deep / "deep.md").write_text("The deepest page says the vault code is written on the ceiling.\n")
    kb = tmp_path / "kb"
    stale = kb / "v-20000101000000-abcdef.tmp"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    out = planvm("index", str(docs), "--kb", str(kb), "--max-file-bytes", "1000", timeout=180)
    assert out.returncode == 0, out.stderr
    no_traceback(out)
    assert "indexed 2 file(s)" in out.stdout
    assert not stale.exists()
    warnings = out.stderr
    for name in ("notes.txt", "bad\\xff.md", "big.txt"):
        assert warnings.count(name) == 1, warnings  # each skip said once
    chunks = [json.loads(line) for line in next(kb.glob("v-*")).joinpath("chunks.jsonl").read_text().splitlines()]
    text = " ".join(c["content"] for c in chunks)
    assert "root:" not in text and "vault code" in text
    followed = planvm("index", str(docs), "--kb", str(tmp_path / "kb2"), "--follow-symlinks", timeout=180)
    assert followed.returncode == 0 and "indexed 4 file(s)" in followed.stdout, followed.stderr


# --- answers without a model ------------------------------------------------------------------------------


def test_an_unrelated_question_is_not_answered_from_the_knowledge_base(example_kb):
    out = planvm("run", "What is the capital of France?", "--kb", str(example_kb), "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["final_answer"] == "The knowledge base does not contain an answer to this question."
    assert data["answer_found"] is False and data["model_used"] is False
    assert "Building index" not in out.stderr  # the BM25 library's own debug lines stay out
    related = json.loads(planvm("run", "How do I resume a run that was killed?", "--kb", str(example_kb), "--json", timeout=120).stdout)
    assert related["answer_found"] is True and "planvm resume" in related["final_answer"]


def test_each_output_key_gets_its_own_answer(example_kb):
    out = planvm("exec", str(EXAMPLES / "plans" / "multi_key_output.json"), "--kb", str(example_kb), "--json", timeout=120)
    data = json.loads(out.stdout)
    assert data["variables"]["summary"] != data["variables"]["pitfall"]


def test_conditional_plans_say_once_that_an_llm_is_needed(example_kb):
    out = planvm("exec", str(EXAMPLES / "plans" / "conditional_branch.json"), "--kb", str(example_kb), timeout=120)
    assert out.returncode == EXIT_FAILED
    assert out.stderr.count("PLANVM_LLM_MODEL") == 1 and "check the LLM backend" not in out.stderr
    assert "caused by" not in out.stderr


def test_run_without_a_knowledge_base_names_planvm_index(tmp_path):
    started = time.monotonic()
    out = planvm("run", "How do runs end?", "--kb", str(tmp_path / "missing"))
    assert out.returncode == EXIT_UNUSABLE and "planvm index" in out.stderr
    assert "plan (" not in out.stderr  # said before planning
    assert time.monotonic() - started < 30


def test_kg_import_errors_name_the_field(tmp_path):
    bad = write(tmp_path / "g.json", {"entities": [{"name": "A"}], "relationships": [{"source_entity": "A"}]})
    out = planvm("kg", "import", bad, "--kb", str(tmp_path / "kb"))
    assert out.returncode == EXIT_UNUSABLE and "relationships.0.target_entity" in out.stderr


# --- training, for a newcomer -------------------------------------------------------------------------------


def test_train_offline_fails_fast_naming_base_model(tmp_path):
    started = time.monotonic()
    out = planvm("train", "--config", str(EXAMPLES / "train" / "train.toml"), "--output", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert time.monotonic() - started < 30
    assert out.returncode == EXIT_UNUSABLE and "--base-model" in out.stderr and "planvm tiny-model" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_offline_training_path_trains_for_real(tmp_path):
    base = tmp_path / "tiny-base"
    made = planvm("tiny-model", str(base), "--hidden-size", "16", "--vocab-size", "400", timeout=120)
    assert made.returncode == 0, made.stderr
    out = planvm(
        "train", "--config", str(EXAMPLES / "train" / "train.toml"), "--base-model", str(base), "--max-steps", "2",
        "--output", str(tmp_path / "lora"), timeout=300, env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "trained 2 steps" in out.stdout and (tmp_path / "lora" / "adapter_config.json").is_file()
    assert "FutureWarning" not in out.stderr and "Traceback" not in out.stderr
    # Not a terminal: a line per tenth of the run with the loss and the time left, no bars or raw dicts.
    assert "training: step 1/2, loss" in out.stderr and "training: step 2/2, loss" in out.stderr and "s left" in out.stderr
    assert "{'loss'" not in out.stderr and "%|" not in out.stderr


def test_train_quick_shows_the_loss_going_down_and_config_paths_follow_the_file(tmp_path):
    base = tmp_path / "tiny-base"
    assert planvm("tiny-model", str(base), "--hidden-size", "16", "--vocab-size", "400", timeout=120).returncode == 0
    out = planvm("train", "--quick", "--base-model", str(base), "--max-steps", "30", "--output", str(tmp_path / "quick"),
                 timeout=300, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "quick" / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["last_loss"] < metrics["first_loss"]
    config = json.loads((tmp_path / "quick" / "training_config.json").read_text())
    assert config["modules_to_save"] == ["lm_head"] and config["learning_rate"] == 5e-3
    assert planvm("train", "--quick").returncode == 2
    with_config = planvm("train", "--quick", "--base-model", str(base), "--config", str(EXAMPLES / "train" / "train.toml"))
    assert with_config.returncode == 2 and "--quick is its own configuration" in with_config.stderr
    no_teacher = planvm("datagen", "--kb", str(tmp_path / "kb"), "--out", str(tmp_path / "rows.jsonl"))
    assert no_teacher.returncode == 2 and "datagen needs a teacher LLM" in no_teacher.stderr

    # A config in another folder: its relative paths are the config's, not the current folder's.
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "rows.jsonl").write_text((EXAMPLES / "train" / "train.jsonl").read_text().split("\n", 1)[0] + "\n")
    (folder / "train.toml").write_text(f'base_model = "{base}"\ndata = "rows.jsonl"\neval_data = ""\noutput_dir = "out"\n'
                                       f'max_steps = 1\nper_device_train_batch_size = 1\ngradient_accumulation_steps = 1\n')
    out = planvm("train", "--config", str(folder / "train.toml"), timeout=300, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert (folder / "out" / "adapter_config.json").is_file() and "trained 1 steps on 1 rows" in out.stdout


def test_eval_help_and_defaults():
    out = planvm("eval", "--help")
    assert "required unless --base-model" in out.stdout and "held_out.jsonl" in out.stdout
    top = planvm("--help")
    commands = top.stdout.split("Commands:")[1]
    assert "..." not in commands  # no cut-off descriptions
    missing = planvm("eval")
    assert missing.returncode == EXIT_UNUSABLE and "--adapter" in missing.stderr


def test_datagen_that_keeps_nothing_exits_1(tmp_path, example_kb):
    from fake_openai import FakeChatServer

    with FakeChatServer() as server:
        for _ in range(40):
            server.reply("I would rather not.")
        env = {"PLANVM_LLM_BASE_URL": server.url, "PLANVM_LLM_MODEL": "m", "PLANVM_LLM_MAX_RETRIES": "0"}
        out = planvm("datagen", "--kb", str(example_kb), "--out", str(tmp_path / "rows.jsonl"), "--max-rows", "1", env=env, timeout=120)
    assert out.returncode == EXIT_FAILED, out
    assert "no row was kept" in out.stderr and "found no JSON object" in out.stderr
    assert "no a JSON" not in out.stderr


def test_tiny_model_refuses_missing_rows_and_bad_sizes(tmp_path):
    out = planvm("tiny-model", str(tmp_path / "m"), "--data", str(tmp_path / "missing.jsonl"))
    assert out.returncode == EXIT_UNUSABLE and "no such file" in out.stderr and not (tmp_path / "m").exists()
    odd = planvm("tiny-model", str(tmp_path / "m"), "--hidden-size", "18")
    assert odd.returncode == EXIT_UNUSABLE and "multiple of 4" in odd.stderr
