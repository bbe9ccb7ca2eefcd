"""Typed, validated JSON configs.

Each stage describes its config as a pydantic model (``ConfigModel``): unknown keys, wrong types, missing fields and
out-of-range values are refused with one line that names the file, the dotted field path and what was expected.
Keys starting with ``_`` are comments and are dropped before validation. ``--set dotted.key=value`` overrides any
value (the value is parsed as JSON when it can be, else taken as a string) before validation, so overrides are
checked exactly like the file.
"""

from __future__ import annotations

import importlib.resources
import json
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lumi.core.errors import LumiError
from lumi.core.files import read_json

# The shipped configs are package data (lumi/configs/, ``config/`` in a checkout links to it), so an installed wheel
# finds them as a checkout does; read through importlib.resources (a plain directory for any non-zipped install).
CONFIG_DIR = Path(str(importlib.resources.files("lumi").joinpath("configs")))


def config_file(path: str | Path) -> Path:
    """A ``--config`` path: as given when it exists (relative to the current directory), else the shipped config of
    that name (``demo/corpus.json``, also spelled ``config/demo/corpus.json`` as a checkout's docs do); a path found
    in neither place is returned as given, to be refused by the reader naming it."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("config",) else path.parts
    shipped = CONFIG_DIR.joinpath(*parts) if parts else CONFIG_DIR
    return shipped if shipped.is_file() else path


def shipped_configs() -> list[str]:
    """Names (relative to the shipped set) of every shipped config, sorted."""
    return sorted(str(path.relative_to(CONFIG_DIR)) for path in CONFIG_DIR.rglob("*.json"))


class ConfigModel(BaseModel):
    """Base of every config: strict types, no unknown keys, no NaN or infinite number (JSON has none, but Python's
    reader takes ``NaN``/``Infinity``, and ``lr=Infinity`` passes ``> 0``), validated on assignment too."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


C = TypeVar("C", bound=ConfigModel)


def strip_comments(value: Any) -> Any:
    """Drop keys starting with ``_`` at every level."""
    if isinstance(value, dict):
        return {k: strip_comments(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(value, list):
        return [strip_comments(v) for v in value]
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value`` into ("a.b.c", value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise LumiError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: Mapping[str, Any]) -> dict:
    """Set dotted keys in a nested dict (creating intermediate dicts); validation happens afterwards."""
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node: Any = data
        for part in path:
            if isinstance(node, list):
                node = node[_list_index(node, part, dotted)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise LumiError(f"--set {dotted}: '{part}' is not a section")
        if isinstance(node, list):
            node[_list_index(node, last, dotted)] = value
        else:
            node[last] = value
    return data


def _list_index(items: list, part: str, dotted: str) -> int:
    """``sources.0.documents``: a numeric part indexes into a list."""
    if not part.isdigit() or int(part) >= len(items):
        raise LumiError(f"--set {dotted}: '{part}' is not an index of a list of {len(items)}")
    return int(part)


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return field, "unknown key"
    if kind == "missing":
        return field, "missing required field"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {json.dumps(got, default=str)[:100]})"  # never a whole section
    return field, f"{error['msg'][0].lower()}{error['msg'][1:]}{shown}"


def validate_config(cls: type[C], data: Any, source: str, flags: Iterable[str] = ()) -> C:
    """Validate ``data`` against ``cls``; ``source`` names the file in the error message, unless the field at fault
    was set by one of the stage ``flags`` (field names; the flag is its kebab-case spelling), which is named then."""
    if not isinstance(data, dict):
        raise LumiError(f"{source}: expected a JSON object at top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except RecursionError:
        raise LumiError(f"{source}: config nested too deeply") from None
    except ValidationError as exc:
        field, problem = _describe(exc.errors()[0])
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        flag = next((f for f in flags if field == f or field.startswith(f"{f}.")), None)
        if flag is not None:
            raise LumiError(f"--{flag.replace('_', '-')}: {problem}{suffix}") from None
        raise LumiError(f"{source}: field '{field}': {problem}{suffix}") from None


def resolve_references(value: Any, config_file: str | Path) -> Any:
    """Every ``{"from": PATH, ...}`` reference in a config read from ``config_file``, made absolute when ``PATH`` is
    relative and names a file beside ``config_file`` or in a directory above it (the nearest wins): a copy of the
    config tree that a user edits then reads its own files, never the shipped ones. A reference found nowhere there
    is left as written (then a path from the current directory, else from the shipped config/)."""
    if isinstance(value, list):
        return [resolve_references(item, config_file) for item in value]
    if not isinstance(value, dict):
        return value
    resolved = {key: resolve_references(item, config_file) for key, item in value.items()}
    reference = resolved.get("from")
    if isinstance(reference, str) and not Path(reference).is_absolute():
        for directory in Path(config_file).absolute().parents:
            if (directory / reference).is_file():
                resolved["from"] = str(directory / reference)
                break
    return resolved


def load_config(cls: type[C], path: str | Path | None, overrides: Iterable[str] = (),
                flag_values: Mapping[str, Any] | None = None) -> C:
    """Load a JSON config file (or start from defaults when ``path`` is None), apply ``--set`` overrides and
    stage flags (flags win), and validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = config_file(path)
        source = str(path)
        data = read_json(path, what="config file")
        if not isinstance(data, dict):
            raise LumiError(f"{source}: expected a JSON object at top level, got {type(data).__name__}")
        try:
            data = resolve_references(strip_comments(data), path)
        except RecursionError:
            raise LumiError(f"{source}: config nested too deeply") from None
    pairs = dict(parse_override(o) for o in overrides)
    if pairs:
        source += " (with --set)"
        apply_overrides(data, pairs)
    flags = {k: v for k, v in (flag_values or {}).items() if v is not None}
    apply_overrides(data, flags)
    return validate_config(cls, data, source, flags)


def config_to_dict(config: ConfigModel) -> dict:
    return config.model_dump(mode="json")


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "null").replace("Literal", "one of ").replace("Annotated", "")


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length")):
            if getattr(item, name, None) is not None:
                parts.append(f"{symbol} {getattr(item, name)}")
    return ", ".join(parts)


def _models_in(annotation: Any) -> list[type[ConfigModel]]:
    """Config sections inside an annotation, through list[...], unions, Optional and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def config_reference(cls: type[ConfigModel], prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """Rows (field, type, default, constraints, description) for every field, nested sections flattened with dots;
    the README/docs config reference is generated from this so it cannot drift from the code."""
    rows = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        dotted = f"{prefix}{name}"
        models = _models_in(annotation)
        if models:
            is_list = typing.get_origin(annotation) is list
            kind = ("list of " if is_list else "") + " or ".join(m.__name__ for m in models)
            rows.append((dotted, kind, "", "", field.description or ""))
            for model in models:
                rows.extend(config_reference(model, f"{dotted}{'[]' if is_list else ''}"
                                                    f"{f'<{model.__name__}>' if len(models) > 1 else ''}."))
            continue
        default = "required" if field.is_required() else json.dumps(field.get_default(call_default_factory=True))
        rows.append((dotted, _type_name(annotation), default, _constraints(field), field.description or ""))
    return rows
