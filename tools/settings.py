"""One settings object for the LLM backend and the knowledge base.

Sources, strongest first: values passed in code (the CLI's flags), environment variables
(``PLANVM_…``; the API key also from ``OPENAI_API_KEY``), a ``planvm.toml`` file (in the current
folder, or the file named by ``PLANVM_CONFIG``), then the defaults below.

::

    # planvm.toml
    llm_backend = "openai"
    llm_base_url = "http://localhost:8000/v1"   # vLLM, Ollama, OpenAI, DeepSeek...
    llm_model = "planner"
    kb = "~/notes-kb"

    [planner]                                    # the fine-tuned planner, served by vLLM
    base_url = "http://gpu-box:8000/v1"
    model = "planner-lora"

Model roles: ``planner`` (writes plans), ``answer`` (``llm_generate``), ``condition`` (``jmp``)
and ``judge``. Each may set its own ``backend``, ``base_url``, ``api_key``, ``model``,
``timeout``, ``idle_timeout``, ``max_retries``, ``temperature``, ``max_tokens``, ``json_mode``, ``local_model``,
``local_adapter`` and ``local_device`` — as a ``[role]`` table or as ``PLANVM_<ROLE>_<FIELD>``
(``PLANVM_PLANNER_BASE_URL``, ``PLANVM_ANSWER_MODEL``…). What a role leaves unset comes from the
general ``llm_*`` / ``local_*`` settings, so one setting still serves every role.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from vm.errors import BadInput

__all__ = ["ROLES", "RoleSettings", "Settings", "config_file"]

#: The model roles, each resolved into its own LLM at the composition root.
ROLES = ("planner", "answer", "condition", "judge")


class RoleSettings(BaseModel):
    """One model role's own settings; each unset field falls back to the general one."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "openai", "local", "extractive"] | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    timeout: float | None = Field(None, gt=0)
    idle_timeout: float | None = Field(None, gt=0)
    max_retries: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, gt=0)
    json_mode: Literal["schema", "object", "off"] | None = None
    local_model: str | None = None
    local_adapter: str | None = None
    local_device: str | None = None


# A role's field and the general setting it overrides.
_ROLE_FIELDS = {
    "backend": "llm_backend", "base_url": "llm_base_url", "api_key": "llm_api_key", "model": "llm_model",
    "timeout": "llm_timeout", "idle_timeout": "llm_idle_timeout", "max_retries": "llm_max_retries", "temperature": "llm_temperature",
    "max_tokens": "llm_max_tokens", "json_mode": "llm_json_mode", "local_model": "local_model",
    "local_adapter": "local_adapter", "local_device": "local_device",
}


class _GeneralEnvironment(EnvSettingsSource):
    """``PLANVM_<FIELD>`` variables for every setting but the role tables (``PLANVM_PLANNER`` is
    the ``--planner`` choice, not a table; roles come from :class:`_RoleEnvironment`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        if field_name in ROLES:
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def prepare_field_value(self, field_name: str, field: Any, value: Any, value_is_complex: bool) -> Any:
        # A list setting may be written plainly: PLANVM_ALLOW_TOOLS=vector_search,llm_generate
        # (a JSON array still works).
        if isinstance(value, str) and get_origin(field.annotation) is list and not value.lstrip().startswith("["):
            return [item.strip() for item in value.split(",") if item.strip()]
        return super().prepare_field_value(field_name, field, value, value_is_complex)


class _RoleEnvironment(PydanticBaseSettingsSource):
    """``PLANVM_<ROLE>_<FIELD>`` variables, gathered into each role's table."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for role in ROLES:
            table = {}
            for name in _ROLE_FIELDS:
                value = os.environ.get(f"PLANVM_{role.upper()}_{name.upper()}")
                if value is not None and value != "":
                    table[name] = value
            if table:
                found[role] = table
        return found


def config_file() -> Path:
    """The settings file: ``PLANVM_CONFIG``, or planvm.toml in the current folder (read only here)."""
    return Path(os.environ.get("PLANVM_CONFIG", "planvm.toml"))


class Settings(BaseSettings):
    """Where the LLM and the knowledge base come from."""

    model_config = SettingsConfigDict(env_prefix="PLANVM_", extra="ignore", populate_by_name=True)

    # --- LLM ------------------------------------------------------------------------------------
    llm_backend: Literal["auto", "openai", "local", "extractive"] = Field(
        "auto",
        description="auto: openai when llm_base_url or llm_model is set, local when local_model is set, "
        "else the offline extractive baseline.",
    )
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
    llm_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("PLANVM_LLM_API_KEY", "OPENAI_API_KEY"),
        description="API key (PLANVM_LLM_API_KEY or OPENAI_API_KEY).",
    )
    llm_model: str | None = Field(None, description="Model name the endpoint serves.")
    llm_timeout: float = Field(
        60.0, gt=0, description="Seconds an LLM request may take to begin its reply (connecting, status line, headers, first "
        "piece); a reply that is not streamed must also arrive whole within them.")
    llm_idle_timeout: float = Field(
        30.0, gt=0, description="Most seconds between two pieces of a streamed LLM reply (a stream may take as long as it "
        "likes in all: the run's max_seconds bounds it).")
    llm_max_retries: int = Field(3, ge=0, description="Retries on 429, 5xx and timeouts (exponential backoff, jitter).")
    llm_temperature: float = Field(0.0, ge=0, description="Sampling temperature.")
    llm_max_tokens: int | None = Field(None, gt=0, description="Most tokens per reply (the backend's default if unset).")
    llm_json_mode: Literal["schema", "object", "off"] = Field(
        "schema", description="How structured replies are requested: a JSON schema, any JSON object, or not at all."
    )
    local_model: str | None = Field(None, description="transformers model folder or name for the local backend.")
    local_adapter: str | None = Field(None, description="PEFT (LoRA) adapter folder applied on top of local_model.")
    local_device: str = Field("auto", description="cpu, cuda, or auto.")

    # --- model roles (each unset field inherits the llm_* / local_* settings above) --------------
    planner: RoleSettings = Field(default_factory=RoleSettings, description="The model that writes plans.")
    answer: RoleSettings = Field(default_factory=RoleSettings, description="The model behind llm_generate.")
    condition: RoleSettings = Field(default_factory=RoleSettings, description="The model that decides jmp conditions.")
    judge: RoleSettings = Field(default_factory=RoleSettings, description="The model that grades answers.")

    # --- knowledge base -------------------------------------------------------------------------
    kb: Path | None = Field(None, description="Knowledge-base folder (default: $PLANVM_HOME/kb or the user data folder).")
    kb_backend: Literal["local", "remote"] = Field("local", description="local: the embedded knowledge base; remote: an HTTP retrieval service.")
    embedding_model: str | None = Field(
        None, description="sentence-transformers model name or folder (default: the bundled all-MiniLM-L6-v2)."
    )
    remote_url: str | None = Field(None, description="Base URL of the retrieval service.")
    remote_token: SecretStr | None = Field(None, description="Bearer token for the retrieval service.")
    remote_kb_id: int | None = Field(None, description="Knowledge-base id for graph search on the service.")
    remote_chat_engine: str = Field("default", description="Chat engine name for embedding retrieval on the service.")
    remote_timeout: float = Field(30.0, gt=0, description="Seconds per request to the service.")
    mcp_timeout: float = Field(20.0, gt=0, description="Seconds an MCP server has to answer `initialize` before it is stopped.")
    mcp: list[dict[str, Any]] = Field(
        default_factory=list,
        description="MCP servers whose tools join the registry: [[mcp]] tables with command (stdio) or url (streamable HTTP), "
        "and optional name, prefix, env.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _RoleEnvironment(settings_cls), _GeneralEnvironment(settings_cls), TomlConfigSettingsSource(settings_cls, toml_file=config_file()))

    @model_validator(mode="before")
    @classmethod
    def _planner_choice(cls, data: Any) -> Any:
        """``planner = "template"`` in planvm.toml is the planner choice, ``[planner]`` the planner
        model's table (TOML allows one of them: then ``kind = "template"`` in the table); the choice
        is kept as ``planner_kind``."""
        if isinstance(data, dict) and isinstance(data.get("planner"), str):
            data = {**data, "planner_kind": data["planner"]}
            del data["planner"]
        elif isinstance(data, dict) and isinstance(data.get("planner"), dict) and "kind" in data["planner"]:
            table = dict(data["planner"])  # [planner] with kind = "template": the choice, beside the model's settings
            data = {**data, "planner": table, "planner_kind": table.pop("kind")}
        return data

    def model_post_init(self, context: Any, /) -> None:
        # Keys and tokens never reach a printed line or a stored error (see vm.redact).
        from vm.redact import register_secret

        for secret in (self.llm_api_key, self.remote_token, *(getattr(self, r).api_key for r in ROLES)):
            if secret is not None:
                register_secret(secret.get_secret_value())

    def for_role(self, role: str) -> Settings:
        """These settings as the ``role`` sees them: its own fields over the general ones."""
        if role not in ROLES:
            raise BadInput(f"unknown model role {role!r}; the roles are {', '.join(ROLES)}")
        own = getattr(self, role).model_dump(exclude_none=True)
        if not own:
            return self
        update = {_ROLE_FIELDS[name]: getattr(getattr(self, role), name) for name in own}
        if "backend" not in own:  # a role naming its own endpoint or model says which backend it is
            if "base_url" in own or "model" in own:
                update["llm_backend"] = "openai"
            elif "local_model" in own:
                update["llm_backend"] = "local"
        return self.model_copy(update=update)

    def role_key(self, role: str) -> tuple[Any, ...]:
        """What decides a role's LLM: roles with equal keys share one client."""
        resolved = self.for_role(role)
        return tuple(
            (v.get_secret_value() if isinstance(v, SecretStr) else v) for v in (getattr(resolved, f) for f in _ROLE_FIELDS.values())
        )

    def kb_path(self) -> Path:
        """The knowledge base's folder: ``kb`` when set, else under planvm's home (a namespace
        other than ``default`` has its own, ``ns/NAME/kb``, unless ``kb`` names one)."""
        if self.kb is not None:
            return self.kb.expanduser()
        from vm.store.locations import planvm_home

        namespace = getattr(self, "namespace", "default")
        return planvm_home() / "kb" if namespace == "default" else planvm_home() / "ns" / namespace / "kb"

    def chosen_llm_backend(self) -> str:
        if self.llm_backend != "auto":
            return self.llm_backend
        if self.llm_base_url or self.llm_model:
            return "openai"
        if self.local_model:
            return "local"
        return "extractive"
