"""Settings come through one door (EngineConfig): unknown keys in planvm.toml are refused, list
settings may be written plainly in the environment, `planvm config` shows where unset places
resolve to, and PLANVM_HOME / PLANVM_CONFIG are read in one place each. No fakes."""

from __future__ import annotations

import json
import re

from conftest import ROOT, planvm

from planvm.engine import EngineConfig


def test_a_misspelled_key_in_planvm_toml_is_one_line_naming_the_right_one(tmp_path):
    (tmp_path / "planvm.toml").write_text("concurency = 4\n")
    out = planvm("config", cwd=tmp_path, env={"PLANVM_HOME": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "'concurency' is not a setting; did you mean 'concurrency'?" in out.stderr
    ran = planvm("runs", "list", cwd=tmp_path, env={"PLANVM_HOME": str(tmp_path)})
    assert ran.returncode == 2 and "concurency" in ran.stderr  # every command, not only config


def test_known_keys_and_tables_still_load(tmp_path, monkeypatch):
    (tmp_path / "planvm.toml").write_text('concurrency = 3\nplanner = "template"\n[limits]\nmax_steps = 9\n[judge]\nmodel = "j"\n')
    monkeypatch.chdir(tmp_path)
    config = EngineConfig.load()
    assert (config.concurrency, config.planner_kind, config.limits.max_steps, config.judge.model) == (3, "template", 9, "j")


def test_list_settings_from_the_environment_plainly_or_as_json(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLANVM_ALLOW_TOOLS", "retrieve_knowledge_graph, llm_generate")
    assert EngineConfig.load().allow_tools == ["retrieve_knowledge_graph", "llm_generate"]
    monkeypatch.setenv("PLANVM_ALLOW_TOOLS", '["vector_search"]')
    assert EngineConfig.load().allow_tools == ["vector_search"]
    out = planvm("config", "--json", cwd=tmp_path, env={"PLANVM_APPROVE_TOOLS": "send_mail", "PLANVM_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    rows = {r["key"]: r for r in json.loads(out.stdout)["settings"]}
    assert rows["approve_tools"]["value"] == ["send_mail"] and rows["approve_tools"]["source"] == "PLANVM_APPROVE_TOOLS"


def test_config_shows_where_the_store_and_the_knowledge_base_are(tmp_path):
    out = planvm("config", "--json", cwd=tmp_path, env={"PLANVM_HOME": str(tmp_path / "home")})
    rows = {r["key"]: r for r in json.loads(out.stdout)["settings"]}
    assert rows["store"] == {"key": "store", "value": str(tmp_path / "home" / "runs.sqlite"), "source": "PLANVM_HOME"}
    assert rows["kb"] == {"key": "kb", "value": str(tmp_path / "home" / "kb"), "source": "PLANVM_HOME"}


def test_planvm_home_and_planvm_config_are_read_in_one_place_each():
    readers: dict[str, list[str]] = {"PLANVM_HOME": [], "PLANVM_CONFIG": []}
    for package in ("vm", "tools", "planner", "training", "planvm"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for name in readers:
                if re.search(rf"environ(?:\.get)?[\[(]\s*[\"']{name}[\"']", text):
                    readers[name].append(str(path.relative_to(ROOT)))
    assert readers == {"PLANVM_HOME": ["vm/store/locations.py"], "PLANVM_CONFIG": ["tools/settings.py"]}
