"""One configuration for every front end: :class:`EngineConfig`.

Sources, strongest first: the front end's flags (values passed in code), ``PLANVM_*`` variables,
``planvm.toml`` (in the current folder, or the file ``PLANVM_CONFIG`` names), then the defaults.
On top of the model roles and the knowledge base (:class:`tools.settings.Settings`), it holds what
a run is made with: the run store, limits, concurrency, the planner choice, the tools (plugins,
MCP servers, built-ins, allow and approve lists), the plan library and leases::

    # planvm.toml
    store = "sqlite:///runs.sqlite"     # or a path, postgresql://…, mysql://…
    planner = "template"                # auto, llm or template (or kind = "…" in a [planner] table)
    concurrency = 4
    plugins = ["tools/weather.py"]

    [limits]
    max_steps = 50
    max_llm_calls = 20

Each limit's variable is ``PLANVM_MAX_STEPS`` and so on; ``planvm config`` prints every value
with the source it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
)

from tools.settings import Settings, config_file
from vm.errors import BackendUnavailable, BadInput

__all__ = ["LIMIT_NAMES", "EngineConfig", "LimitsTable", "config_file", "namespace_table", "namespace_variable"]

#: What a [namespaces.NAME] table may set (the rest is the service's or the store's, for all namespaces).
_NAMESPACE_KEYS = frozenset({
    "plugins", "no_builtins", "mcp_commands", "mcp_urls", "mcp_prefix", "allow_tools", "approve_tools", "kb", "limits",
    "concurrency", "planner_kind", "no_library", "max_active_runs", "tokens_per_day", "serve_token", "mcp_token",
    "llm_backend", "llm_base_url", "llm_api_key", "llm_model", "llm_timeout", "llm_idle_timeout", "llm_max_retries",
    "llm_temperature", "llm_max_tokens", "llm_json_mode", "local_model", "local_adapter", "local_device",
    "embedding_model", "kb_backend", "remote_url", "remote_token", "remote_kb_id", "remote_chat_engine", "remote_timeout",
    "mcp_timeout", "mcp", "planner", "answer", "condition", "judge",
})

#: The run budgets a front end may set (``[limits]`` in planvm.toml, ``PLANVM_MAX_*``, ``--max-*``).
LIMIT_NAMES = ("max_steps", "max_seconds", "max_llm_calls", "max_tokens", "max_value_bytes", "max_plan_bytes", "max_depth")


def namespace_table(namespaces: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``[namespaces.NAME]`` as settings: ``planner = "…"`` (or ``kind`` in its ``[planner]``
    table) is the planner choice, ``planner_kind``."""
    table = dict(namespaces.get(name) or {})
    if isinstance(table.get("planner"), str):
        table["planner_kind"] = table.pop("planner")
    elif isinstance(table.get("planner"), dict) and "kind" in table["planner"]:
        table["planner"] = dict(table["planner"])
        table["planner_kind"] = table["planner"].pop("kind")
    return table


def namespace_variable(name: str, key: str) -> str:
    """The variable holding namespace ``name``'s ``serve_token`` or ``mcp_token``:
    ``PLANVM_NS_TEAM_A_SERVE_TOKEN`` for ``team-a`` (``-`` written ``_``)."""
    return f"PLANVM_NS_{name.upper().replace('-', '_')}_{key.upper()}"


# Command-line option names that differ from the configuration's.
_OPTION_NAMES = {"store_path": "store", "kb_path": "kb"}




class LimitsTable(BaseModel):
    """``[limits]``: the budgets every run is held to (unset: :class:`vm.Limits`' defaults)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, ge=1, description="Executed instructions per run (default 1000).")
    max_seconds: float | None = Field(None, gt=0, description="Wall-clock seconds per run, planning included (default 600).")
    max_llm_calls: int | None = Field(None, ge=0, description="LLM calls per run (default 200).")
    max_tokens: int | None = Field(None, ge=1, description="Prompt plus completion tokens per run (default: no budget).")
    max_value_bytes: int | None = Field(None, ge=1024, description="Largest value a step may produce, as JSON text (default 4 MiB).")
    max_plan_bytes: int | None = Field(None, ge=1024, description="Largest plan file or text (default 32 MiB).")
    max_depth: int | None = Field(None, ge=4, le=400, description="Nesting of lists and objects in a plan or a value (default 100).")

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class _EngineEnvironment(PydanticBaseSettingsSource):
    """The variables whose names are not ``PLANVM_<FIELD>``: ``PLANVM_PLANNER`` (the planner
    choice) and ``PLANVM_MAX_*`` (the ``[limits]`` table)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        planner = os.environ.get("PLANVM_PLANNER")
        if planner:
            found["planner_kind"] = planner
        limits = {name: os.environ[f"PLANVM_{name.upper()}"] for name in LIMIT_NAMES if os.environ.get(f"PLANVM_{name.upper()}")}
        if limits:
            found["limits"] = limits
        return found


class EngineConfig(Settings):
    """Everything a front end can set, resolved once; an :class:`planvm.engine.Engine` is built from it."""

    # --- runs -------------------------------------------------------------------------------------
    store: str | None = Field(
        None, description="Run store: an SQLite file or sqlite:///path, postgresql://…, mysql://… (default: $PLANVM_HOME/runs.sqlite)."
    )
    limits: LimitsTable = Field(default_factory=LimitsTable, description="Run budgets ([limits] table; PLANVM_MAX_* variables).")
    concurrency: int = Field(8, ge=1, description="Tool calls that may overlap when steps are independent.")
    planner_kind: Literal["auto", "llm", "template"] = Field(
        "auto", description="Who writes plans: llm, template (no model), or auto (llm when an LLM is configured). planner = … in planvm.toml."
    )
    no_library: bool = Field(False, description="Neither reuse kept best plans nor show them to the planner.")
    lease_seconds: float = Field(30.0, ge=1, description="How long a run this process executes stays its own without a heartbeat.")
    store_retry_seconds: float = Field(
        30.0, ge=0, description="How long a lost database connection is retried (with backoff) before a store call gives up.")

    # --- service tokens (a front end's --token flag, else these) ------------------------------------
    serve_token: SecretStr | None = Field(None, description="The bearer token `planvm serve` requires (PLANVM_SERVE_TOKEN).")
    mcp_token: SecretStr | None = Field(None, description="The bearer token `planvm mcp --http` requires (PLANVM_MCP_TOKEN).")

    # --- tools ------------------------------------------------------------------------------------
    plugins: list[str] = Field(default_factory=list, description="Python files whose @tool functions are registered.")
    no_builtins: bool = Field(False, description="Leave out the built-in tools.")
    mcp_commands: list[str] = Field(default_factory=list, description="MCP servers started over stdio (--mcp).")
    mcp_urls: list[str] = Field(default_factory=list, description="MCP servers reached over streamable HTTP (--mcp-url).")
    mcp_prefix: bool = Field(False, description="Name MCP tools SERVER_TOOL.")
    allow_tools: list[str] = Field(default_factory=list, description="Limit runs to these tools (empty: every tool).")
    approve_tools: list[str] = Field(default_factory=list, description="Calls to these tools wait for an approval.")

    # --- namespaces ---------------------------------------------------------------------------------
    namespace: str = Field(
        "default", description="The namespace runs are made and read in (--namespace, PLANVM_NAMESPACE); its [namespaces.NAME] "
        "table's settings apply over the top level's.")
    namespaces: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="[namespaces.NAME] tables: a namespace's own tools, knowledge base, models, limits, "
        "quotas and tokens; what a table leaves out comes from the top level (tokens excepted).")
    max_active_runs: int | None = Field(
        None, ge=1, description="Quota: runs of the namespace planning, queued, running or waiting at once (unset: no quota).")
    tokens_per_day: int | None = Field(
        None, ge=1, description="Quota: prompt plus completion tokens the namespace's runs may use a day, UTC (unset: no quota).")

    # --- the service ------------------------------------------------------------------------------
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names `planvm serve` answers for besides its address (and localhost's names on loopback); "
        "NAME or NAME:PORT, * for any. PLANVM_ALLOWED_HOSTS: comma-separated.",
    )

    _flag_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)  # the fields a front end's flags set
    _top: EngineConfig | None = PrivateAttr(default=None)  # a namespace's settings: the top level they were made from

    @field_validator("namespace")
    @classmethod
    def _namespace_name(cls, value: str) -> str:
        from vm.store.quotas import check_namespace

        try:
            return check_namespace(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        """PLANVM_ALLOWED_HOSTS=a.example,b.example (or a JSON list, like the other list settings)."""
        if isinstance(value, str):
            import json

            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, (list, tuple)):
            blank = [name for name in value if isinstance(name, str) and not name.strip()]
            return [name.strip() if isinstance(name, str) else name for name in value if name not in blank]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init, roles, general, toml = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings)
        return init, roles, _EngineEnvironment(settings_cls), general, toml

    # --- building one -------------------------------------------------------------------------------

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None) -> EngineConfig:
        """The configuration with ``flags`` on top (named as the fields are, or as the command
        line's options: ``store_path``, ``kb_path``, ``max_steps``…). A flag that is None, empty
        or False counts as not given. ``BackendUnavailable`` says which setting is not valid."""
        import tomllib

        try:
            cls.check_file()
            given = cls.flags_from(flags or {})
            config = cls(**given)
            config._flag_keys = frozenset(given)
            return config.for_namespace(config.namespace) if config.namespace != "default" or "default" in config.namespaces else config
        except tomllib.TOMLDecodeError as exc:
            raise BackendUnavailable(f"{config_file()} is not valid TOML ({exc}); fix it, or point PLANVM_CONFIG at another file") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise BackendUnavailable(f"the settings (flags, PLANVM_* variables or {config_file()}) are not valid: {problems}") from None

    @classmethod
    def check_file(cls) -> None:
        """Refuse a planvm.toml holding a key no setting has (a misspelling would be ignored
        silently otherwise): ``BackendUnavailable`` naming the key and the closest setting."""
        import difflib
        import tomllib

        path = config_file()
        if not path.is_file():
            return
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {path} ({exc.strerror or exc}); fix it, or point PLANVM_CONFIG at another file") from None
        known = {name for name in cls.model_fields if name != "planner_kind"} | {"planner"}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise BackendUnavailable(
                    f"{path}: {key!r} is not a setting{hint} (`planvm config` lists every setting)")

    def for_namespace(self, name: str) -> EngineConfig:
        """The settings of namespace ``name``: its ``[namespaces.NAME]`` table over the top level
        (flags still win; tables such as ``[limits]`` and a model role's merge key by key), made
        from the top level whichever namespace's settings it is asked of. A namespace's
        ``serve_token`` and ``mcp_token`` (its table's, or ``PLANVM_NS_NAME_SERVE_TOKEN`` and
        ``…_MCP_TOKEN``, which win over the file) and its knowledge base (its table's ``kb``, else
        its own folder) are its own, never inherited: the top level's belong to ``default``.
        ``BadInput`` for a namespace that is not declared (``default`` always is)."""
        from vm.store.quotas import check_namespace

        from tools.settings import ROLES

        check_namespace(name)
        base = self._top if self._top is not None else self  # (another namespace's settings never leak into this one's)
        if name not in base.namespaces and name != "default":
            known = ", ".join(sorted({"default", *base.namespaces}))
            raise BadInput(f"no namespace {name!r} is declared (namespaces: {known}); add a [namespaces.{name}] table to "
                           f"{config_file()}")
        table = namespace_table(base.namespaces, name)
        refused = sorted(set(table) - _NAMESPACE_KEYS)
        if refused:
            raise BadInput(f"[namespaces.{name}] in {config_file()}: {', '.join(map(repr, refused))} cannot be set per namespace "
                           f"(a namespace may set: {', '.join(sorted(_NAMESPACE_KEYS))})")
        merged = base.model_dump()
        merged["namespaces"] = base.namespaces
        merged["namespace"] = name
        for key, value in table.items():
            if key in base._flag_keys:
                continue  # a flag given to this command wins over every file
            if (key == "limits" or key in ROLES) and isinstance(value, Mapping):
                merged[key] = {**{k: v for k, v in (merged.get(key) or {}).items() if v is not None}, **value}
            else:
                merged[key] = value
        if name != "default":
            # The top level's tokens and knowledge base are the default namespace's: another
            # namespace has its own (its table's, or PLANVM_NS_NAME_SERVE_TOKEN…; its own folder).
            for key in ("serve_token", "mcp_token"):
                if key not in base._flag_keys:
                    merged[key] = os.environ.get(namespace_variable(name, key)) or table.get(key)
            if "kb" not in table and "kb" not in base._flag_keys:
                merged["kb"] = None  # (its own folder under planvm's home: see kb_path)
        try:
            config = type(self).model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise BackendUnavailable(f"[namespaces.{name}] in {config_file()} is not valid: {problems}") from None
        config._flag_keys = base._flag_keys
        config._top = base
        return config

    def namespace_names(self) -> list[str]:
        """Every declared namespace, ``default`` first."""
        return ["default", *sorted(n for n in self.namespaces if n != "default")]

    def token_namespaces(self, kind: str = "serve_token") -> dict[str, str]:
        """Each namespace's bearer token (``serve_token`` or ``mcp_token``) → its namespace name."""
        found: dict[str, str] = {}
        for name in self.namespace_names():
            config = self if name == self.namespace else self.for_namespace(name)
            token = getattr(config, kind)
            if token is not None and token.get_secret_value():
                secret = token.get_secret_value()
                if secret in found and found[secret] != name:
                    raise BackendUnavailable(f"namespaces {found[secret]!r} and {name!r} have the same {kind}; give each its own")
                found[secret] = name
        return found

    @classmethod
    def flags_from(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the fields, from a front end's options (those not given left out)."""
        flags: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for name, value in options.items():
            if value is None or value is False or (isinstance(value, (tuple, list)) and not value):
                continue
            name = _OPTION_NAMES.get(name, name)
            if name in LIMIT_NAMES:
                limits[name] = value
            elif name == "limits" and isinstance(value, Mapping):
                limits.update({k: v for k, v in value.items() if v is not None})
            elif name in cls.model_fields:
                flags[name] = list(value) if isinstance(value, tuple) else value
        if limits:
            flags["limits"] = limits
        return flags

    # --- explaining one -----------------------------------------------------------------------------

    @classmethod
    def explain(cls, flags: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every setting as ``planvm config`` prints it: ``key`` (``limits.max_steps`` for a
        table's entry), ``value`` (keys and passwords masked) and ``source`` (``flag``,
        ``PLANVM_…``, ``planvm.toml``, ``planvm.toml [namespaces.NAME]`` for a value of the
        namespace's own table, or ``default``). ``namespaces`` lists the declared namespaces."""
        from tools.settings import ROLES
        from vm.redact import redact

        import tomllib

        given = cls.flags_from(flags or {})
        config = cls.load(flags)
        try:
            toml = tomllib.loads(config_file().read_text(encoding="utf-8")) if config_file().is_file() else {}
        except (OSError, tomllib.TOMLDecodeError):
            toml = {}
        planner = toml.get("planner")
        if isinstance(planner, str):
            toml["planner_kind"] = planner
        elif isinstance(planner, dict) and "kind" in planner:
            toml["planner_kind"] = planner["kind"]

        def has(values: Mapping[str, Any], path: tuple[str, ...]) -> bool:
            node: Any = values
            for part in path:
                if not isinstance(node, Mapping) or node.get(part) is None:
                    return False
                node = node[part]
            return True

        def variables(path: tuple[str, ...]) -> list[str]:
            if path[0] in ROLES and len(path) == 2:
                return [f"PLANVM_{path[0]}_{path[1]}".upper()]
            if path[0] == "limits" and len(path) == 2:
                return [f"PLANVM_{path[1]}".upper()]
            if path[0] == "planner_kind":
                return ["PLANVM_PLANNER"]
            if path[0] == "llm_api_key":
                return ["PLANVM_LLM_API_KEY", "OPENAI_API_KEY"]
            return [f"PLANVM_{path[0]}".upper()]

        namespace = config.namespace
        applied = namespace != "default" or namespace in config.namespaces  # (its table's settings are over the top level's)
        table = namespace_table(config.namespaces, namespace) if applied else {}
        own_only = ("serve_token", "mcp_token", "kb") if namespace != "default" else ()  # (never the top level's)

        def origin(path: tuple[str, ...]) -> str:
            if has(given, path):
                return "flag"
            if path[0] in ("serve_token", "mcp_token") and namespace != "default" and os.environ.get(namespace_variable(namespace, path[0])):
                return namespace_variable(namespace, path[0])
            if has(table, path):
                return f"{config_file()} [namespaces.{namespace}]"
            if path[0] in own_only:
                return "default"
            for name in variables(path):
                if os.environ.get(name):
                    return name
            if has(toml, path):
                return str(config_file())
            return "default"

        def shown(value: Any) -> Any:
            if isinstance(value, SecretStr):
                return "***" if value.get_secret_value() else ""
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, str):
                from vm.store.locations import _masked

                return redact(_masked(value))
            return value

        rows = []
        for name in cls.model_fields:
            value = getattr(config, name)
            if name in ("store", "kb") and value is None:
                # Unset: where it is, under planvm's home (PLANVM_HOME or the user data folder).
                from vm.store.locations import default_store_path, planvm_home_source

                where = default_store_path() if name == "store" else config.kb_path()
                rows.append({"key": name, "value": str(where), "source": planvm_home_source()})
                continue
            if isinstance(value, BaseModel):
                for inner in type(value).model_fields:
                    inner_value = getattr(value, inner)
                    if name == "limits" and inner_value is None:
                        from vm.limits import Limits

                        inner_value = Limits.model_fields[inner].default  # what a run gets
                    if name in ROLES and inner_value is None:
                        continue  # a role's unset field: the general setting above applies
                    rows.append({"key": f"{name}.{inner}", "value": shown(inner_value), "source": origin((name, inner))})
                continue
            if name == "namespaces":  # the declared namespaces (their tables hold tokens: never printed)
                source = str(config_file()) if config.namespaces else "default"
                rows.append({"key": name, "value": config.namespace_names(), "source": source})
                continue
            key = "planner" if name == "planner_kind" else name
            rows.append({"key": key, "value": shown(value), "source": origin((name,))})
        return rows
