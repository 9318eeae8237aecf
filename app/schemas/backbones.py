"""The backbone registry as the API shows it (from ``training.catalog.describe``: no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BackboneWeights(BaseModel):
    name: str = Field(description="The torchvision enum member, e.g. IMAGENET1K_V1.")
    file_name: str
    num_params: int
    image_size: int
    imagenet_acc1: float | None
    cached: bool = Field(description="In this server's torch cache: usable without a download.")


class Backbone(BaseModel):
    object: Literal["backbone"] = "backbone"
    name: str
    family: str
    num_params: int = Field(description="With torchvision's 1000-class head.")
    native_size: int
    min_size: int
    size_multiple: int
    num_stages: int
    default_weights: str
    supports_dropout: bool
    supports_stochastic_depth: bool
    weights: list[BackboneWeights]


class BackboneList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Backbone]
