"""``/v1/backbones``: the registry, from the engine's catalog (no torch)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.deps import get_caller
from app.api.errors import error_responses
from app.errors import NotFound
from app.schemas.backbones import Backbone, BackboneList
from training.catalog import backbone_names, describe, get_backbone

router = APIRouter(prefix="/v1/backbones", tags=["backbones"], dependencies=[Depends(get_caller)])


@router.get("", response_model=BackboneList, summary="List backbones", responses=error_responses())
def list_backbones() -> BackboneList:
    """Every torchvision classifier, its input sizes, parameter counts and pretrained weights, with whether
    each is in this server's cache."""
    return BackboneList(data=[Backbone.model_validate(describe(get_backbone(name))) for name in backbone_names()])


@router.get("/{name}", response_model=Backbone, summary="Get a backbone", responses=error_responses(404))
def get_backbone_info(name: Annotated[str, Path(max_length=64)]) -> Backbone:
    try:
        info = get_backbone(name)
    except KeyError as error:
        raise NotFound(str(error.args[0]), param="name", code="unknown_backbone") from None
    return Backbone.model_validate(describe(info))
