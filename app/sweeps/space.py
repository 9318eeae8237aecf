"""A sweep's search space: spec paths and the values each may take, checked like a spec before any trial.

    {"optimizer.lr": {"loguniform": [1e-4, 1e-1]},
     "regularization.label_smoothing": {"choice": [0, 0.1]},
     "scheduler.name": {"choice": ["cosine", "onecycle"]}}

A trial's spec is the sweep's base spec (as submitted) with each path set to the trial's value; every
check names the path (``space.optimizer.lr``). No Optuna here: ``app.sweeps.study`` turns a dimension into
its distribution.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import ValidationError

from app.errors import InvalidSpec
from training.spec import Spec

Kind = Literal["int", "uniform", "loguniform", "choice", "grid"]
KINDS: tuple[str, ...] = get_args(Kind)
RANGE_KINDS = ("int", "uniform", "loguniform")
JOINT_SAMPLES = 4  # random combinations checked on top of every value of every path
Scalar = bool | int | float | str | None


@dataclass(frozen=True)
class Dimension:
    path: str
    kind: Kind
    values: tuple[Scalar, ...]  # [low, high] for a range kind; the candidates for choice and grid

    @property
    def param(self) -> str:
        return f"space.{self.path}"

    @property
    def is_discrete(self) -> bool:
        return self.kind in ("choice", "grid")

    def representatives(self) -> list[Scalar]:
        """The values a check tries: both ends and the middle of a range, every candidate of a choice."""
        if self.is_discrete:
            return list(self.values)
        low, high = self.values
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if self.kind == "int":
            return [*sorted({int(low), int(high), (int(low) + int(high)) // 2})]
        middle = math.sqrt(low * high) if self.kind == "loguniform" else (low + high) / 2
        return [low, middle, high]


def parse_space(raw: Mapping[str, Any]) -> list[Dimension]:
    """The dimensions of a space as the API takes it; a 422 naming the path of the first bad one."""
    if not raw:
        raise InvalidSpec("a sweep needs at least one path to search", param="space")
    return [_dimension(path, body) for path, body in raw.items()]


def _dimension(path: str, body: Any) -> Dimension:
    param = f"space.{path}"
    if not path or any(not part.isidentifier() for part in path.split(".")):
        raise InvalidSpec(f"{param}: a path is dotted spec field names, like optimizer.lr", param=param)
    if not isinstance(body, Mapping) or len(body) != 1 or next(iter(body)) not in KINDS:
        raise InvalidSpec(f"{param}: give exactly one of {', '.join(KINDS)}, e.g. {{choice: [a, b]}}", param=param)
    kind, values = next(iter(body.items()))
    if not isinstance(values, list) or not values:
        raise InvalidSpec(f"{param}: {kind} takes a list of values", param=param)
    if any(isinstance(value, dict | list) for value in values):
        raise InvalidSpec(f"{param}: values are numbers, strings, booleans or null", param=param)
    if kind in RANGE_KINDS:
        _check_range(param, kind, values)
    elif len(set(map(repr, values))) != len(values):
        raise InvalidSpec(f"{param}: {kind} lists a value twice", param=param)
    return Dimension(path=path, kind=kind, values=tuple(values))


def _check_range(param: str, kind: str, values: list[Any]) -> None:
    numeric = int if kind == "int" else (int, float)
    if len(values) != 2 or not all(isinstance(v, numeric) and not isinstance(v, bool) for v in values):
        numbers = "integers" if kind == "int" else "numbers"
        raise InvalidSpec(f"{param}: {kind} takes [low, high], two {numbers}", param=param)
    low, high = values
    if not low < high:
        raise InvalidSpec(f"{param}: {kind} needs low < high, got [{low}, {high}]", param=param)
    if kind == "loguniform" and low <= 0:
        raise InvalidSpec(f"{param}: loguniform needs low > 0, got {low}", param=param)


def with_values(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a spec as submitted) with each dotted path set to its value; missing sections are made."""
    spec = copy.deepcopy(dict(base))
    for path, value in params.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {} if child is None else child
            if not isinstance(child, dict):  # a scalar where the path needs a section
                raise InvalidSpec(f"space.{path}: spec.{part} is not a section of the spec", param=f"space.{path}")
            node = child
        node[leaf] = value
    return spec


def value_at(spec: Mapping[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_space(base: Mapping[str, Any], dimensions: list[Dimension], seed: int) -> Spec:
    """Every value of every path, then a few random combinations, must make a valid spec in which the path
    holds the value set. Returns the base spec resolved (with each path at its first value)."""
    first = {dim.path: dim.representatives()[0] for dim in dimensions}
    for dim in dimensions:
        for value in dim.representatives():
            _valid_trial_spec(base, first | {dim.path: value}, blame=dim)
    rng = random.Random(seed)
    for _ in range(JOINT_SAMPLES):
        _valid_trial_spec(base, {dim.path: rng.choice(dim.representatives()) for dim in dimensions}, blame=None)
    return _valid_trial_spec(base, first, blame=None)


def _valid_trial_spec(base: Mapping[str, Any], params: Mapping[str, Any], blame: Dimension | None) -> Spec:
    try:
        spec = Spec.model_validate(with_values(base, params))
    except ValidationError as error:
        problem = error.errors()[0]
        loc = ".".join(str(part) for part in problem["loc"])
        culprit = blame or _dimension_at(loc, params)
        if culprit is None:
            raise InvalidSpec(f"spec.{loc}: {problem['msg']}", param=f"spec.{loc}") from None
        shown = ", ".join(f"{path}={value!r}" for path, value in params.items())
        what = "is not a field of the spec" if problem["type"] == "extra_forbidden" else problem["msg"]
        raise InvalidSpec(
            f"{culprit.param}: with {shown} the spec is invalid at spec.{loc}: {what}", param=culprit.param
        ) from None
    resolved = spec.model_dump(mode="json")
    for path, value in params.items():
        if value_at(resolved, path) != value:
            param = f"space.{path}"
            message = f"{param}: the spec does not keep {value!r} at {path}; search a field the spec has"
            raise InvalidSpec(message, param=param)
    return spec


def _dimension_at(loc: str, params: Mapping[str, Any]) -> Dimension | None:
    """The searched path a validation error is about: the longest one that is a prefix of its location."""
    matches = [path for path in params if loc == path or loc.startswith(path + ".") or path.startswith(loc + ".")]
    if not matches:
        return None
    path = max(matches, key=len)
    return Dimension(path=path, kind="choice", values=(params[path],))


def grid_points(dimensions: list[Dimension]) -> list[dict[str, Scalar]]:
    """Every combination of a grid sweep's values, in order."""
    paths = [dim.path for dim in dimensions]
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*(dim.values for dim in dimensions))]
