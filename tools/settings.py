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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = ["Settings"]


def _config_file() -> Path:
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
    llm_timeout: float = Field(60.0, gt=0, description="Seconds per LLM request.")
    llm_max_retries: int = Field(3, ge=0, description="Retries on 429, 5xx and timeouts (exponential backoff, jitter).")
    llm_temperature: float = Field(0.0, ge=0, description="Sampling temperature.")
    llm_max_tokens: int | None = Field(None, gt=0, description="Most tokens per reply (the backend's default if unset).")
    llm_json_mode: Literal["schema", "object", "off"] = Field(
        "schema", description="How structured replies are requested: a JSON schema, any JSON object, or not at all."
    )
    local_model: str | None = Field(None, description="transformers model folder or name for the local backend.")
    local_adapter: str | None = Field(None, description="PEFT (LoRA) adapter folder applied on top of local_model.")
    local_device: str = Field("auto", description="cpu, cuda, or auto.")

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))

    def model_post_init(self, context: Any, /) -> None:
        # Keys and tokens never reach a printed line or a stored error (see vm.redact).
        from vm.redact import register_secret

        for secret in (self.llm_api_key, self.remote_token):
            if secret is not None:
                register_secret(secret.get_secret_value())

    def kb_path(self) -> Path:
        if self.kb is not None:
            return self.kb.expanduser()
        home = os.environ.get("PLANVM_HOME")
        if home:
            return Path(home) / "kb"
        import platformdirs

        return Path(platformdirs.user_data_dir("planvm")) / "kb"

    def chosen_llm_backend(self) -> str:
        if self.llm_backend != "auto":
            return self.llm_backend
        if self.llm_base_url or self.llm_model:
            return "openai"
        if self.local_model:
            return "local"
        return "extractive"
