"""Engine settings, from the environment (prefix ``FT_``). No torch here."""

from __future__ import annotations

from functools import cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseSettings):
    """Limits and switches of the training engine that are the operator's, not the spec's."""

    model_config = SettingsConfigDict(env_prefix="FT_", extra="ignore")

    allow_weight_downloads: bool | None = Field(
        None,
        description="Let torchvision download pretrained weights missing from $TORCH_HOME's cache. Default: on "
        "for the engine alone and the embedded service (as torchvision does), off when FT_DATABASE_URL is set.",
    )
    in_memory_max_mb: int = Field(
        2048,
        ge=0,
        description="Data sets whose decoded images fit in this many MiB are decoded once into memory.",
    )
    extract_max_mb: int = Field(20480, ge=1, description="Largest total size an archive may extract to, in MiB.")
    extract_max_files: int = Field(2_000_000, ge=1, description="Most entries an archive may hold.")
    extract_max_ratio: int = Field(
        200,
        ge=1,
        description="Largest expansion of an archive entry, and of the whole archive (bytes written at most this "
        "many times the archive's size, never less than 1 MiB): archive bombs exceed it.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="PyTorch's intra-op threads per training process. Default: the cores this process may run on "
        "(its CPU affinity: a container's cpuset, taskset), shared among the ranks of a run on this machine.",
    )
    image_max_pixels: int = Field(40_000_000, ge=1, description="Largest image accepted, in pixels (width x height).")


@cache
def engine_settings() -> EngineSettings:
    return EngineSettings()
