"""Reading ops-edited YAML files with line numbers, and turning their errors into RulesError.

Every problem becomes a :class:`~retrier.errors.RulesError` that names the file
and the 1-based line: unreadable bytes, tabs in indentation, YAML syntax errors,
duplicate keys, and each pydantic validation error. For the last, the error's
``loc`` path is followed through ruamel.yaml's round-trip tree to the node's line.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from retrier.errors import RulesError
from retrier.rulesmodels import EXPECTED, EXPECTED_ITEM, describe_value

logger = logging.getLogger(__name__)

# Length of the hex digest that identifies a file's version in logs.
DIGEST_LENGTH = 12

_MISSING = "missing key "

# Pydantic error types that mean "the value has the wrong type or range".
_VALUE_ERRORS = frozenset(
    {
        "bool_type",
        "dict_type",
        "float_type",
        "greater_than_equal",
        "int_from_float",
        "int_type",
        "less_than_equal",
        "list_type",
        "literal_error",
        "model_attributes_type",
        "model_type",
        "string_type",
        "too_short",
    }
)


@dataclass(frozen=True)
class YamlDocument:
    """A YAML file as read: its round-trip tree (line info in ``.lc``) and digest."""

    path: Path
    data: Any
    digest: str


def read_yaml(path: Path | str) -> YamlDocument:
    """Read and parse the YAML file at ``path``, keeping the line of every node.

    Raises:
        RulesError: the file cannot be read, is not UTF-8, indents with a tab, or
            is not valid YAML (including a key given twice in one mapping).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"cannot read the file: {exc.strerror or exc}", path=path) from None

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"invalid UTF-8 at byte {exc.start}; save the file as UTF-8"
        raise RulesError(message, path=path, line=line) from None

    _check_indentation(text, path)

    parser = YAML(typ="rt")
    parser.preserve_quotes = True  # keeps quoted text distinguishable from bare words
    try:
        data = parser.load(text)
    except MarkedYAMLError as exc:
        raise _yaml_error(exc, path) from None
    except YAMLError as exc:
        raise RulesError(f"invalid YAML: {exc}", path=path, line=1) from None

    digest = hashlib.sha256(raw).hexdigest()[:DIGEST_LENGTH]
    return YamlDocument(path=path, data=data, digest=digest)


def _check_indentation(text: str, path: Path) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            raise RulesError(
                "the line is indented with a tab; YAML indentation must use spaces",
                path=path,
                line=number,
            )


def _yaml_error(exc: MarkedYAMLError, path: Path) -> RulesError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    problem = str(exc.problem or "").strip()

    if problem.startswith("found duplicate key"):
        first = exc.context_mark.line + 1 if exc.context_mark is not None else None
        detail = problem.replace("found duplicate key", "duplicate key", 1)
        where = f" in the mapping that starts at line {first}" if first is not None else ""
        return RulesError(f"{detail}{where}; remove one of them", path=path, line=line)

    detail = f"invalid YAML: {problem}"
    if exc.context:
        detail += f" ({str(exc.context).strip()}"
        if exc.context_mark is not None and exc.context_mark.line + 1 != line:
            detail += f" that starts at line {exc.context_mark.line + 1}"
        detail += ")"
    return RulesError(detail, path=path, line=line)


def require_mapping(document: YamlDocument, what: str) -> dict[Any, Any]:
    """Return the document's top node, which must be a mapping.

    Raises:
        RulesError: the file is empty or its top node is not a mapping.
    """
    if document.data is None:
        raise RulesError(f"the file is empty; expected {what}", path=document.path, line=1)
    if not isinstance(document.data, dict):
        raise RulesError(
            f"the file contains {describe_value(document.data)}, expected {what}",
            path=document.path,
            line=1,
        )
    return document.data


@dataclass(frozen=True)
class Location:
    """Position of a validation error: its line, owning item, and key path within the item."""

    line: int
    owner: str | None
    keys: tuple[str, ...]

    def describe(self) -> str:
        """Describe the location, such as ``backoff.initial in rule 'x'``."""
        keys = ".".join(self.keys)
        if self.owner is None:
            return keys or "the file"
        return f"{keys} in {self.owner}" if keys else self.owner


def locate(tree: Any, loc: tuple[str | int, ...], item_noun: str) -> Location:
    """Follow a pydantic ``loc`` through the round-trip tree to the deepest node it reaches.

    Parts of ``loc`` with no node in the tree (such as the list index a
    validator adds when one mapping stands for a list of one) are skipped. An
    item of the top list (the ``rules`` list, or the top node of a cases file)
    becomes the owner, named ``{item_noun} 'its-name'`` or ``{item_noun} N``.
    """
    node = tree
    line = 1
    owner: str | None = None
    keys: list[str] = []

    for part in loc:
        if isinstance(node, dict) and part in node:
            line = _line(node, part, is_key=True) or line
            keys.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line = _line(node, part, is_key=False) or line
            if owner is None and keys in ([], ["rules"]):
                owner = _owner(node[part], part, item_noun)
                keys = []
            node = node[part]

    return Location(line=line, owner=owner, keys=tuple(keys))


def _line(node: Any, part: Any, *, is_key: bool) -> int | None:
    # Keys brought in by a YAML merge key (<<) have no line of their own.
    try:
        position = node.lc.key(part) if is_key else node.lc.item(part)
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    if not position:  # tagged nodes and flow-style merges carry no position
        return None
    return int(position[0]) + 1


def _owner(item: Any, index: int, noun: str) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and name.strip():
        return f"{noun} {str(name)!r}"
    return f"{noun} {index + 1}"


def translate_errors(
    error: ValidationError,
    tree: Any,
    path: Path,
    *,
    models: dict[str | None, type[BaseModel]],
    item_noun: str,
) -> list[RulesError]:
    """Turn each error of a pydantic validation of ``tree`` into a RulesError with its line.

    Args:
        error: the validation error.
        tree: the round-trip tree that was validated.
        path: the file, for the messages.
        models: the model that validates the mapping under each key (None for the
            top node), to list the allowed keys when a key is unknown.
        item_noun: what an item of the top list is called in messages ("rule").

    Returns:
        The errors in the order of :func:`error_order`.
    """
    found = [_translate(item, tree, path, models, item_noun) for item in error.errors()]
    return sorted(found, key=error_order)


def error_order(error: RulesError) -> tuple[bool, int]:
    """Return the sort key that puts errors by line, but missing keys last.

    A missing key is often the result of a misspelt one, whose "unknown key"
    error names the fix and so should come first.
    """
    return error.message.startswith(_MISSING), error.line or 0


def _translate(
    item: Any,
    tree: Any,
    path: Path,
    models: dict[str | None, type[BaseModel]],
    item_noun: str,
) -> RulesError:
    loc: tuple[str | int, ...] = tuple(item["loc"])
    context = item.get("ctx") or {}
    kind = item["type"]
    if isinstance(context.get("key"), str):
        loc = (*loc, context["key"])

    where = locate(tree, loc, item_noun)
    key = _last_key(loc)

    if kind in ("extra_forbidden", "invalid_key"):
        message = _unknown_key(loc, where, models, item_noun)
    elif kind == "missing":
        parent = locate(tree, loc[:-1], item_noun).describe()
        expected = EXPECTED.get(str(key), "a value")
        message = f"{_MISSING}{key!r} in {parent}; expected {expected}"
    elif kind == "retrier":
        message = f"invalid {where.describe()}: {context.get('detail', item['msg'])}"
    elif kind in _VALUE_ERRORS:
        got = describe_value(item.get("input"))
        message = f"invalid {where.describe()}: got {got}, expected {_expected(loc)}"
    else:
        got = describe_value(item.get("input"))
        message = f"invalid {where.describe()}: got {got}; {item['msg']}"

    return RulesError(message, path=path, line=where.line)


def _unknown_key(
    loc: tuple[str | int, ...],
    where: Location,
    models: dict[str | None, type[BaseModel]],
    item_noun: str,
) -> str:
    key = loc[-1]
    parent_key = _last_key(loc[:-1])
    model = models.get(parent_key if isinstance(parent_key, str) else None)
    allowed = list(model.model_fields) if model is not None else []

    owner_keys = ".".join(where.keys[:-1])
    place = " in ".join(p for p in (owner_keys, where.owner) if p) or "the file"
    message = f"unknown key {key!r} in {place}"
    if not isinstance(key, str):
        message = f"key {describe_value(key)} in {place} is not text"

    close = difflib.get_close_matches(str(key), allowed, n=1) if allowed else []
    if close:
        message += f"; did you mean {close[0]!r}?"
    if allowed:
        joined = ", ".join(allowed)
        message += f" Allowed keys: {joined}" if close else f"; allowed keys: {joined}"
    return message


def _last_key(loc: tuple[str | int, ...]) -> str | int | None:
    for part in reversed(loc):
        if isinstance(part, str):
            return part
    return loc[-1] if loc else None


def _expected(loc: tuple[str | int, ...]) -> str:
    key = _last_key(loc)
    if loc and isinstance(loc[-1], int) and isinstance(key, str) and key in EXPECTED_ITEM:
        return EXPECTED_ITEM[key]
    return EXPECTED.get(str(key), "a valid value")


__all__ = [
    "Location",
    "YamlDocument",
    "error_order",
    "locate",
    "read_yaml",
    "require_mapping",
    "translate_errors",
]
