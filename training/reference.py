"""The spec reference in markdown, generated from the spec's JSON schema so that it cannot drift.

``python -m training.reference`` prints it; ``make docs`` (``app.docs``) writes it into README.md.
"""

from __future__ import annotations

import json
from typing import Any

from training.spec import spec_json_schema


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return _ref_name(prop["$ref"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " \\| ".join(_type(p, defs) for p in prop["anyOf"])
    if "oneOf" in prop:
        return " \\| ".join(_type(p, defs) for p in prop["oneOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        items = prop.get("items", {})
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p, defs) for p in prop["prefixItems"]) + "]"
        return f"list of {_type(items, defs)}"
    if prop.get("format") == "duration":
        return "duration"
    return str(kind)


def _bounds(prop: dict[str, Any]) -> str:
    parts = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{sign} {prop[key]}")
    for option in prop.get("anyOf", []):
        inner = _bounds(option)
        if inner:
            parts.append(inner)
    return ", ".join(parts)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _fields_table(model: dict[str, Any], defs: dict[str, Any], skip: str | None = None) -> list[str]:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, prop in model.get("properties", {}).items():
        if name == skip:
            continue
        default = json.dumps(prop["default"]) if "default" in prop else "required"
        kind = _type(prop, defs)
        bounds = _bounds(prop)
        meaning = prop.get("description", "")
        lines.append(f"| `{name}` | {kind}{' (' + bounds + ')' if bounds else ''} | `{default}` | {meaning} |")
    return lines


def _variants(union: dict[str, Any], defs: dict[str, Any], tag: str) -> list[str]:
    lines: list[str] = []
    for option in union["oneOf"]:
        name = _ref_name(option["$ref"])
        model = defs[name]
        tag_value = model["properties"][tag]["const"]
        doc = model.get("description", "").replace("\n", " ")
        lines += ["", f"**`{tag}: {tag_value}`** ({name}). {doc}".rstrip(), ""]
        if len(model.get("properties", {})) > 1:
            lines += _fields_table(model, defs, skip=tag)
    return lines


SECTIONS = [
    ("backbone", "BackboneSpec", None),
    ("data", "DataSpec", None),
    ("optimizer", None, "name"),
    ("regularization", "RegularizationSpec", None),
    ("clipping", None, "mode"),
    ("scheduler", None, "name"),
    ("training", "TrainingSpec", None),
]
NESTED = [
    ("backbone.head", "HeadSpec", None),
    ("backbone.freeze", "freeze", "strategy"),
    ("data.augment", "AugmentSpec", None),
    ("regularization.mixup", "MixupSpec", None),
    ("regularization.ema", "EMASpec", None),
    ("regularization.early_stopping", "EarlyStoppingSpec", None),
    ("training.divergence", "DivergenceSpec", None),
]


def spec_reference() -> str:
    """The reference of every section and field of a spec, in markdown."""
    schema = spec_json_schema()
    defs = schema["$defs"]
    props = schema["properties"]
    lines: list[str] = []
    for section, model_name, tag in SECTIONS:
        lines += ["", f"#### `{section}`"]
        if tag is None:
            assert model_name is not None
            lines += ["", *_fields_table(defs[model_name], defs)]
        else:
            lines += ["", f"One of the variants below, chosen by `{section}.{tag}`."]
            lines += _variants(props[section], defs, tag)
    for path, model_name, tag in NESTED:
        lines += ["", f"#### `{path}`"]
        if tag is None:
            lines += ["", *_fields_table(defs[model_name], defs)]
        else:
            union = defs["BackboneSpec"]["properties"][model_name]
            lines += ["", f"One of the variants below, chosen by `{path}.{tag}`."]
            lines += _variants(union, defs, tag)
    return "\n".join(lines).strip() + "\n"


if __name__ == "__main__":
    print(spec_reference())
