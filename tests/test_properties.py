"""Property tests: generated rules files through the checker, generated list bodies through the client.

Rules files are built from a strategy of rule dicts and written as block YAML.
They are then loaded as they are, or broken first. A broken file has keys
deleted, renamed or given values of the wrong type, or its text gets a tab, a
duplicated line, a cut, random text or random bytes. Octopods responses are
served by a real local HTTP server to the real client. Random text never
contains "+", so that no generated value can look like a phone number to the
secrets check when the client logs a skipped item.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrier.durations import parse_duration
from retrier.errors import OctopodsError, RulesError
from retrier.octopods import OctopodsClient, Page
from retrier.rules import Reason
from retrier.rulesfile import check_rules, load_rules
from tests.conftest import API_KEY
from tests.servers import HTTPServer, Request, Response

# Shared settings: no per-example deadline (file and network I/O vary), and
# module-scoped fixtures are reused across examples on purpose.
PROPERTY_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

#: Text of any kind except "+": see the module docstring.
TEXT = st.text(st.characters(exclude_characters="+"), max_size=30)

#: Filler words around a rule's token in its examples: no digits, so no codes.
FILLER = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz ABC.,!'"), max_size=20)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


# -- writing YAML -----------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def scalar(value: Any) -> str:
    """Write one YAML scalar; text is always double-quoted, as JSON writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(str(value))


def key_text(key: Any) -> str:
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return scalar(key)


def emit(value: Any, indent: int = 0) -> list[str]:
    """Write ``value`` as block-style YAML lines indented by ``indent`` spaces."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key_text(key)}:")
                lines.extend(emit(item, indent + 2))
            else:
                lines.append(f"{pad}{key_text(key)}: {scalar(item)}")
        return lines
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = emit(item, indent + 2)
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            else:
                lines.append(f"{pad}- {scalar(item)}")
        return lines
    return [pad + scalar(value)]


def render(tree: Any) -> str:
    return "\n".join(emit(tree)) + "\n"


# -- valid rules files ------------------------------------------------------


@dataclass(frozen=True)
class RulesDocument:
    """A generated rules file: its tree, and the examples each rule must classify."""

    tree: dict[str, Any]
    examples: dict[str, list[Reason]]


DURATIONS = st.one_of(
    st.integers(1, 3600).map(lambda n: f"{n}s"),
    st.integers(1, 600).map(lambda n: f"{n}m"),
    st.integers(1, 120).map(lambda n: f"{n}h"),
    st.integers(1, 6).map(lambda n: f"{n}d"),
    st.integers(1, 9).map(lambda n: f"{n}.5m"),
)


@st.composite
def backoffs(draw: st.DrawFn) -> dict[str, str]:
    first, second = draw(DURATIONS), draw(DURATIONS)
    initial, maximum = sorted((first, second), key=parse_duration)
    return {"initial": initial, "max": maximum}


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    """Draw some of the policy keys a retry rule or the defaults may set."""
    policy: dict[str, Any] = {}
    if draw(st.booleans()):
        policy["max_attempts"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        policy["backoff"] = draw(backoffs())
    if draw(st.booleans()):
        policy["delay"] = draw(st.one_of(st.just("0s"), DURATIONS))
    if draw(st.booleans()):
        policy["max_age"] = draw(DURATIONS)
    if draw(st.booleans()):
        policy["alert"] = draw(st.booleans())
    return policy


def regexes(token: str) -> st.SearchStrategy[str]:
    """RE2 patterns in a few forms that match the examples of ``token``, and no text without it."""
    return st.sampled_from(
        [
            token,
            rf"\b{token}\b",
            f"{token}|{token}-other",
            rf"(?:{token})\s*",
            f"^.*{token}",
            f"{token.upper()}",
        ]
    )


@st.composite
def alternatives(draw: st.DrawFn, token: str, code: int) -> tuple[dict[str, Any], Reason]:
    """Draw one match alternative of a rule and a reason that meets all its conditions."""
    kinds = draw(
        st.sets(st.sampled_from(["equals", "contains", "regex", "code"]), min_size=1, max_size=4)
    )
    structured = "code" in kinds and draw(st.booleans())
    text = f"{draw(FILLER)} {token}"
    if "code" in kinds and not structured:
        text += f" (#{code})"
    text += f" {draw(FILLER)}"

    match: dict[str, Any] = {}
    if "equals" in kinds:
        match["equals"] = draw(st.sampled_from([text, text.upper(), f"  {text.strip()}  "]))
    if "contains" in kinds:
        decoys = [f"{token}-alt{number}" for number in range(draw(st.integers(0, 2)))]
        needle = draw(st.sampled_from([token, token.upper()]))
        match["contains"] = needle if not decoys else [*decoys, needle]
    if "regex" in kinds:
        match["regex"] = draw(regexes(token))
    if "code" in kinds:
        match["code"] = draw(st.sampled_from([code, [code], [code, 500_000 + code]]))
    return match, Reason(text, code if structured else None)


@st.composite
def rule_entries(draw: st.DrawFn, index: int, name: str) -> tuple[dict[str, Any], list[Reason]]:
    """Draw one valid rule; its token and codes appear in no other rule."""
    token = f"tk{index}q{draw(st.text(st.sampled_from('abcdefghij'), min_size=1, max_size=4))}"
    code = 100_000 + index
    drawn = draw(st.lists(alternatives(token, code), min_size=1, max_size=3))
    matches = [match for match, _ in drawn]
    reasons = [reason for _, reason in drawn]

    action = draw(st.sampled_from(["retry", "permanent", "pause"]))
    rule: dict[str, Any] = {"name": name}
    if draw(st.booleans()):
        rule["description"] = draw(st.sampled_from(["Why it fails.", "Ask the account owner."]))
    rule["match"] = matches[0] if len(matches) == 1 and draw(st.booleans()) else matches
    rule["action"] = action
    if action == "retry":
        rule.update(draw(policies()))
    elif draw(st.booleans()):
        rule["alert"] = draw(st.booleans())
    rule["examples"] = [
        {"reason": reason.text, "code": reason.code} if reason.code is not None else reason.text
        for reason in reasons
    ]
    return rule, reasons


NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True).filter(lambda n: n != "default")


@st.composite
def rules_documents(draw: st.DrawFn) -> RulesDocument:
    names = draw(st.lists(NAMES, min_size=0, max_size=5, unique=True))
    tree: dict[str, Any] = {"version": 1}
    if draw(st.booleans()):
        defaults = draw(policies())
        if draw(st.booleans()):
            defaults["action"] = draw(st.sampled_from(["retry", "permanent", "pause"]))
        if defaults:
            tree["defaults"] = defaults
    tree["rules"] = []
    examples: dict[str, list[Reason]] = {}
    for index, name in enumerate(names):
        rule, reasons = draw(rule_entries(index, name))
        tree["rules"].append(rule)
        examples[name] = reasons
    return RulesDocument(tree, examples)


# -- broken rules files -----------------------------------------------------

WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "contains", "initial"]), st.integers(), max_size=2),
)


def key_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the path of every key and list item under ``value``."""
    found: list[tuple[Any, ...]] = []
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found.append((*path, key))
        found.extend(key_paths(item, (*path, key)))
    return found


def parent_of(tree: Any, path: tuple[Any, ...]) -> Any:
    node = tree
    for part in path[:-1]:
        node = node[part]
    return node


def mutate_tree(data: st.DataObject, tree: dict[str, Any]) -> dict[str, Any]:
    """Delete, rename or retype one to three keys or items of ``tree``."""
    tree = copy.deepcopy(tree)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = key_paths(tree)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = parent_of(tree, path)
        key = path[-1]
        change = data.draw(st.sampled_from(["delete", "rename", "retype"]))
        if change == "delete":
            del parent[key]
        elif change == "rename" and isinstance(parent, dict):
            typo = data.draw(st.sampled_from([key[:-1], key + "s", key.upper(), ""]) | TEXT)
            value = parent.pop(key)
            parent[typo] = value
        else:
            parent[key] = data.draw(WRONG_VALUES)
    return tree


def mutate_text(data: st.DataObject, text: str) -> bytes:
    """Break the written file: a tab, a duplicated or shifted line, a cut, random text or bytes."""
    lines = text.splitlines(keepends=True) or [""]
    change = data.draw(
        st.sampled_from(["tab", "duplicate", "shift", "cut", "insert", "replace", "bytes"])
    )
    number = data.draw(st.integers(0, len(lines) - 1))
    if change == "tab":
        lines[number] = "\t" + lines[number]
    elif change == "duplicate":
        lines.insert(number, lines[number])
    elif change == "shift":
        lines[number] = data.draw(st.sampled_from([" ", "   ", ""])) + lines[number].lstrip(" ")
    elif change == "cut":
        return text[: data.draw(st.integers(0, len(text)))].encode()
    elif change == "insert":
        lines.insert(number, data.draw(st.text(max_size=40)))
    elif change == "replace":
        return data.draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    else:
        return data.draw(st.binary(max_size=200))
    return "".join(lines).encode("utf-8", "surrogatepass")


def check_errors(path: Path, raw: bytes) -> list[RulesError]:
    """Run the checker on ``raw`` and check each error it lists; return them."""
    path.write_bytes(raw)
    errors = check_rules(path)
    # Count lines generously: every break that str.splitlines recognises, and the line
    # that an editor shows after a final newline.
    line_count = len((raw.decode("utf-8", "replace") + "x").splitlines())
    for error in errors:
        assert isinstance(error, RulesError)
        assert error.line is None or 1 <= error.line <= line_count, (error.line, line_count)
        assert error.message.strip() != ""
        assert "Traceback" not in error.message
        assert str(error).startswith(str(path))
    return errors


# -- rules properties -------------------------------------------------------


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(document=rules_documents())
def test_valid_rules_examples_classify(workdir: Path, document: RulesDocument) -> None:
    """A valid generated file passes the check, loads, and each example gets its own rule."""
    path = workdir / "valid.yaml"

    errors = check_errors(path, render(document.tree).encode())
    ruleset = load_rules(path)

    assert errors == []
    assert [rule.name for rule in ruleset.rules] == list(document.examples)
    for name, reasons in document.examples.items():
        for reason in reasons:
            assert ruleset.classify(reason).rule == name, (name, reason)


@settings(PROPERTY_SETTINGS, max_examples=250)
@given(document=rules_documents(), data=st.data())
def test_broken_rules_errors_located(
    workdir: Path, document: RulesDocument, data: st.DataObject
) -> None:
    """A broken file never makes the checker raise; each error has a line inside the file."""
    path = workdir / "broken.yaml"
    breaking = data.draw(st.sampled_from(["tree", "text", "both"]))
    tree = mutate_tree(data, document.tree) if breaking != "text" else document.tree
    text = render(tree)
    raw = mutate_text(data, text) if breaking != "tree" else text.encode()

    check_errors(path, raw)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(text=st.text(max_size=300))
def test_random_text_rules_errors_located(workdir: Path, text: str) -> None:
    """Any text at all as a rules file gives located errors, never an exception."""
    check_errors(workdir / "random.yaml", text.encode("utf-8", "surrogatepass"))


def test_duplicate_key_error_names_line(workdir: Path) -> None:
    """A key given twice is reported at the second one's line, which the file has."""
    path = workdir / "duplicate.yaml"
    raw = b'version: 1\nrules:\n  - name: a\n    name: b\n    match: {contains: "x"}\n'

    errors = check_errors(path, raw)

    assert len(errors) == 1
    assert errors[0].line == 4
    assert "duplicate key" in errors[0].message


# -- Octopods list bodies through the real client ---------------------------

STATUSES = ["failed", "FAILED", " Failed ", "delivered", "read", "sent", "DELETED", "unknown"]

TIMES = st.builds(
    lambda moment, zone, form: (
        moment.replace(tzinfo=zone).isoformat()
        if form == "iso"
        else moment.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ),
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31)),
    st.sampled_from(
        [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
    st.sampled_from(["iso", "z"]),
)

IDS = st.integers(1, 2**53)

REASONS = st.one_of(
    st.none(),
    TEXT,
    st.fixed_dictionaries(
        {"code": st.one_of(st.none(), st.integers(0, 999_999), st.integers(1, 999_999).map(str))},
        optional={"title": TEXT},
    ),
)


@st.composite
def valid_items(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """Draw one list item of either documented shape and the message id it must give."""
    message_id = draw(IDS)
    raw_id: int | str = draw(st.sampled_from([message_id, str(message_id)]))
    phone = draw(st.sampled_from([None, "", "+15550001234", 15550001234]))
    if draw(st.booleans()):
        item: dict[str, Any] = {
            "message_id": raw_id,
            "status": draw(st.sampled_from(STATUSES)),
            "phone_number": phone,
            "sent_at": draw(TIMES),
        }
        if draw(st.booleans()):
            item["failure_reason"] = draw(REASONS)
    else:
        item = {
            "user_phone_number": phone,
            "created_at": draw(TIMES),
            "message_content": draw(TEXT),
            "message_status": {
                "channel_message_id": raw_id,
                "message_status": draw(st.sampled_from(STATUSES)).upper(),
                "failure_reason": draw(st.sampled_from(["", None]) | REASONS),
            },
        }
    return item, message_id


#: Ways to break one field of an item of the first shape, each certainly invalid.
BREAKS: dict[str, st.SearchStrategy[Any]] = {
    "message_id": st.one_of(
        st.integers(-1000, 0),
        st.booleans(),
        st.floats(),
        st.text(st.sampled_from("abc xyz-"), max_size=8),
    ),
    "status": st.one_of(st.just(""), st.just("   "), st.integers(), st.booleans(), st.lists(TEXT)),
    "sent_at": st.one_of(st.just(""), st.sampled_from(["yesterday", "24/04/2026"]), st.integers()),
    "phone_number": st.one_of(st.booleans(), st.floats(), st.lists(st.integers(), max_size=2)),
    "failure_reason": st.one_of(
        st.integers(),
        st.booleans(),
        st.lists(TEXT, max_size=2),
        st.just({"code": "abc"}),
        st.just({"code": 131026, "title": 5}),
    ),
}


@st.composite
def invalid_items(draw: st.DrawFn) -> Any:
    """Draw an item that the client must skip: not an object, or one field missing or wrong."""
    if draw(st.booleans()):
        return draw(st.one_of(st.none(), st.integers(), TEXT, st.lists(st.integers(), max_size=2)))
    item = {
        "message_id": draw(IDS),
        "status": "failed",
        "phone_number": None,
        "sent_at": draw(TIMES),
    }
    field = draw(st.sampled_from(sorted(BREAKS)))
    if field in ("message_id", "status", "sent_at") and draw(st.booleans()):
        del item[field]
    else:
        item[field] = draw(BREAKS[field])
    return item


@dataclass(frozen=True)
class ListReply:
    """A list response to serve, and the message ids it must give (None when it is not a page)."""

    response: Response
    expected_ids: list[int] | None
    expected_invalid: int


@st.composite
def pages(draw: st.DrawFn) -> ListReply:
    valid = draw(st.lists(valid_items(), max_size=8))
    invalid = draw(st.lists(invalid_items(), max_size=5))
    items: list[Any] = [item for item, _ in valid]
    for bad in invalid:
        items.insert(draw(st.integers(0, len(items))), bad)
    body: Any = items if draw(st.booleans()) else {"request_id": "r-1", "messages": items}
    return ListReply(
        Response(200, raw=json.dumps(body).encode()),
        [message_id for _, message_id in valid],
        len(invalid),
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)

HTTP_STATUSES = st.sampled_from([200, 200, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503])

HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@st.composite
def other_replies(draw: st.DrawFn) -> ListReply:
    """Draw any other response: arbitrary JSON or bytes, any status, random retry headers."""
    status = draw(HTTP_STATUSES | st.integers(200, 599).filter(lambda s: s not in (204, 304)))
    body = draw(
        st.one_of(
            JSON.map(lambda value: json.dumps(value).encode()),
            st.binary(max_size=100),
            st.fixed_dictionaries(
                {"error": TEXT}, optional={"error_code": JSON, "request_id": TEXT}
            ).map(lambda value: json.dumps(value).encode()),
        )
    )
    headers = draw(
        st.dictionaries(
            st.sampled_from(["Retry-After", "X-RateLimit-Reset", "Content-Type"]),
            HEADER_TEXT,
            max_size=2,
        )
    )
    return ListReply(Response(status, headers=headers, raw=body), None, 0)


@pytest.fixture(scope="module")
def octopods_server() -> Iterator[HTTPServer]:
    server = HTTPServer().start()
    try:
        yield server
    finally:
        server.stop()


def list_once(server: HTTPServer, reply: ListReply) -> Page | OctopodsError:
    """Serve ``reply`` to one real list request; return the page or the OctopodsError raised."""

    def answer(request: Request) -> Response:
        return reply.response

    server.handler = answer
    client = OctopodsClient(server.url, API_KEY, timeout_s=5)
    try:
        return client.list_messages()
    except OctopodsError as error:
        return error
    finally:
        client.close()


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(reply=pages())
def test_list_page_keeps_valid_items(octopods_server: HTTPServer, reply: ListReply) -> None:
    """A 200 page mixing valid and invalid items returns every valid one, in order."""
    result = list_once(octopods_server, reply)

    assert isinstance(result, Page), result
    assert [message.message_id for message in result.messages] == reply.expected_ids
    assert result.invalid == reply.expected_invalid


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(reply=other_replies())
def test_list_any_reply_page_or_error(octopods_server: HTTPServer, reply: ListReply) -> None:
    """Any status and body gives a Page or an OctopodsError, never another exception."""
    result = list_once(octopods_server, reply)

    assert isinstance(result, Page | OctopodsError)
