"""Pydantic models of the rules file and the cases file, and the JSON schema made from them.

The models validate the tree that :mod:`retrier.yamlsource` reads, in strict
mode and with unknown keys forbidden, so a number is never taken for text nor a
quoted ``"true"`` for a boolean. Validators raise errors of type ``retrier``
whose message is complete; :mod:`retrier.yamlsource` adds the file and line.
The same models produce ``config/rules.schema.json`` through
:func:`rules_json_schema`, so editors and the loader agree on what is valid.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from retrier.durations import DURATION_HINT, DURATION_PATTERN, format_duration, parse_duration
from retrier.rules import DEFAULT_RULE, Action, compile_regex

logger = logging.getLogger(__name__)

#: Rule names are lowercase slugs, so they read well in logs and Sentry titles.
RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
_RULE_NAME = re.compile(RULE_NAME_PATTERN)

#: Largest code: Meta's codes have at most 6 digits.
MAX_CODE = 999_999

#: Plain words that YAML 1.1 tools read as booleans. ruamel.yaml reads them as
#: text, but an ops engineer who writes ``name: yes`` most likely did not mean
#: the text, so they must be quoted.
YAML11_BOOLEAN_WORDS = frozenset({"yes", "no", "on", "off", "y", "n"})

#: Expected value of each key, for the messages of type and null errors.
EXPECTED = {
    "version": "1, the only version this retrier reads",
    "defaults": "a mapping of action and policy keys",
    "rules": "a list of rules",
    "name": "a lowercase name of letters, digits and hyphens, such as 'meta-rate-limit'",
    "description": "text",
    "match": "a mapping of conditions, or a list of such mappings",
    "equals": "text",
    "contains": "text, or a list of texts",
    "regex": "an RE2 pattern, as text",
    "code": "a whole number from 0 to 999999, or a list of them",
    "action": "one of 'retry', 'permanent' or 'pause'",
    "max_attempts": "a whole number from 1 to 100",
    "backoff": "a mapping with initial and max, such as {initial: 30s, max: 30m}",
    "initial": DURATION_HINT,
    "max": DURATION_HINT,
    "delay": DURATION_HINT,
    "max_age": DURATION_HINT,
    "alert": "true or false",
    "examples": "a list of reasons, each text or a mapping with reason and code",
    "reason": "the text of a failure reason",
    "rule": "a rule name, or 'default' for reasons no rule matches",
}

#: Expected value of each item of a list-valued key.
EXPECTED_ITEM = {
    "contains": "text",
    "code": "a whole number from 0 to 999999",
    "match": "a mapping of conditions such as {contains: 'rate limit'}",
    "examples": "text, or a mapping with reason and code",
    "rules": "a mapping with name, match and action",
}


def invalid(detail: str, **context: Any) -> PydanticCustomError:
    """Build the error the validators raise; ``detail`` is the whole message.

    ``context`` may name a ``key`` below the failing location, so that the line
    reported is that key's rather than its parent's.
    """
    return PydanticCustomError("retrier", "{detail}", {"detail": detail, **context})


def describe_value(value: Any) -> str:
    """Describe a YAML value for an error message: its text, or what kind of value it is."""
    if value is None:
        return "no value (empty or null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{value} (a number)"
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"a value of type {type(value).__name__}"


def _text(value: Any, *, allow_blank: bool = False) -> str:
    if isinstance(value, bool | int | float) or value is None:
        shown = "null" if value is None else str(value)
        if isinstance(value, bool):
            shown = shown.lower()
        raise invalid(f'got {describe_value(value)}, expected text; put it in quotes, as "{shown}"')
    if not isinstance(value, str):
        raise invalid(f"got {describe_value(value)}, expected text")
    # ruamel.yaml returns a plain str only for unquoted scalars (quoted ones are
    # ScalarString subclasses), so this catches exactly the bare words.
    if type(value) is str and value.lower() in YAML11_BOOLEAN_WORDS:
        raise invalid(
            f"got the bare word {value!r}, which many YAML tools read as a boolean;"
            f' put it in quotes, as "{value}"'
        )
    if not allow_blank and not value.strip():
        raise invalid(f"got {value!r}, expected non-blank text")
    return str(value)


def _text_or_blank(value: Any) -> str:
    return _text(value, allow_blank=True)


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


#: Longest duration the file accepts. Dramatiq's Redis broker cannot delay a
#: message by 7 days or more, and a resend that late would be stale anyway.
MAX_DURATION_S = 6 * 86400


def _duration(value: Any) -> float:
    if not isinstance(value, str):
        raise invalid(f"got {describe_value(value)}, expected {DURATION_HINT}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if seconds > MAX_DURATION_S:
        raise invalid(
            f"got {value!r}, expected at most 6d: the queue cannot delay a resend by 7 days or more"
        )
    return seconds


def _check_regex(pattern: str) -> str:
    try:
        compile_regex(pattern)
    except ValueError as exc:
        raise invalid(
            f"invalid regex {pattern!r}: {exc}. The pattern is RE2 syntax, which has no"
            " backreferences or lookaround; to match text literally, use contains"
        ) from None
    return pattern


def _check_name(name: str) -> str:
    if not _RULE_NAME.fullmatch(name):
        raise invalid(f"got {name!r}, expected {EXPECTED['name']}")
    if name == DEFAULT_RULE:
        raise invalid(
            f"got {name!r}, which is reserved for reasons no rule matches; choose another name"
        )
    return name


Text = Annotated[str, BeforeValidator(_text), Field(min_length=1)]
TextOrBlank = Annotated[str, BeforeValidator(_text_or_blank)]
Pattern = Annotated[str, BeforeValidator(_text), AfterValidator(_check_regex), Field(min_length=1)]
RuleName = Annotated[
    str,
    BeforeValidator(_text),
    AfterValidator(_check_name),
    Field(json_schema_extra={"pattern": RULE_NAME_PATTERN}),
]
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    Field(json_schema_extra={"type": "string", "pattern": DURATION_PATTERN}),
]
Code = Annotated[int, Field(ge=0, le=MAX_CODE)]
Texts = Annotated[
    list[Text],
    BeforeValidator(
        _as_list, json_schema_input_type=Text | Annotated[list[Text], Field(min_length=1)]
    ),
    Field(min_length=1),
]
Codes = Annotated[
    list[Code],
    BeforeValidator(
        _as_list, json_schema_input_type=Code | Annotated[list[Code], Field(min_length=1)]
    ),
    Field(min_length=1),
]


class StrictModel(BaseModel):
    """Base of every model: strict types, unknown keys forbidden, null never taken for unset."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _reject_null(cls, value: Any, info: ValidationInfo) -> Any:
        # A key written with no value is a mistake: leave the key out to get the default.
        if value is None:
            expected = EXPECTED.get(info.field_name or "", "a value")
            raise invalid(
                f"got no value (empty or null), expected {expected};"
                " to use the default, remove the key, and to mean the word null, quote it"
            )
        return value


class BackoffModel(StrictModel):
    """The exponential backoff between hook attempts."""

    initial: Duration | None = Field(
        default=None, description="Wait after the first failed attempt."
    )
    max: Duration | None = Field(default=None, description="Maximum wait between attempts.")

    @model_validator(mode="after")
    def _check_order(self) -> BackoffModel:
        if self.initial is None and self.max is None:
            raise invalid(
                "backoff is empty; set initial, max or both, as in {initial: 30s, max: 30m}"
            )
        if self.initial is not None and self.initial <= 0:
            raise invalid("got a duration of 0s, expected one above 0s", key="initial")
        if self.initial is not None and self.max is not None and self.initial > self.max:
            raise invalid(
                f"initial {format_duration(self.initial)} is longer than max"
                f" {format_duration(self.max)}; set initial <= max",
                key="initial",
            )
        return self


class PolicyModel(StrictModel):
    """Policy keys shared by the defaults and by rules; unset keys are inherited."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="Hook calls allowed across a resend chain, from 1 to 100."
    )
    backoff: BackoffModel | None = Field(default=None, description="Backoff between hook attempts.")
    delay: Duration | None = Field(
        default=None, description="Wait before the first resend; 0s is at once."
    )
    max_age: Duration | None = Field(
        default=None,
        description="Messages older than this are not resent; unset means RETRIER_MAX_MESSAGE_AGE.",
    )
    alert: bool | None = Field(
        default=None,
        description="Send a Sentry alert when the failure is seen; default true for permanent"
        " and pause, false for retry.",
    )

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise invalid("got a duration of 0s, expected one above 0s, such as 1h")
        return value


class DefaultsModel(PolicyModel):
    """The action and policy of reasons no rule matches; rules inherit its policy keys."""

    action: Action | None = Field(default=None, description="Action for reasons no rule matches.")


class MatchModel(StrictModel):
    """Conditions that must all hold."""

    equals: Text | None = Field(
        default=None, description="The whole reason, ignoring case and surrounding spaces."
    )
    contains: Texts | None = Field(
        default=None, description="Text found anywhere in the reason, ignoring case; any of a list."
    )
    regex: Pattern | None = Field(
        default=None, description="RE2 pattern searched anywhere in the reason, ignoring case."
    )
    code: Codes | None = Field(
        default=None,
        description="Error code from a structured reason or from the text; any of a list.",
    )

    @model_validator(mode="after")
    def _check_not_empty(self) -> MatchModel:
        conditions = (self.equals, self.contains, self.regex, self.code)
        if all(condition is None for condition in conditions):
            raise invalid(
                "match has no condition; set one or more of equals, contains, regex and code"
            )
        return self


class ExampleModel(StrictModel):
    """A reason that must classify to the rule it is listed under."""

    reason: TextOrBlank = Field(description="The reason's text; may be empty when code is set.")
    code: Code | None = Field(
        default=None, description="The structured code, as in {code: 470, ...}."
    )

    @model_validator(mode="after")
    def _check_not_empty(self) -> ExampleModel:
        if not self.reason.strip() and self.code is None:
            raise invalid("the example has empty text and no code; give one of them")
        return self


def _example_items(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return [item if isinstance(item, dict) else {"reason": item} for item in value]


class RuleModel(PolicyModel):
    """One rule: a name, a match, an action and policy keys."""

    name: RuleName = Field(description="Unique lowercase name of letters, digits and hyphens.")
    description: Text | None = Field(
        default=None, description="What the failure means and what people should do."
    )
    match: Annotated[
        list[MatchModel],
        BeforeValidator(
            _as_list,
            json_schema_input_type=MatchModel | Annotated[list[MatchModel], Field(min_length=1)],
        ),
        Field(min_length=1),
    ] = Field(
        description="A mapping of conditions that must all hold, or a list of such mappings"
        " of which any one may hold."
    )
    action: Action = Field(description="retry, permanent, or pause for account-level failures.")
    examples: Annotated[
        list[ExampleModel],
        BeforeValidator(_example_items, json_schema_input_type=list[Text | ExampleModel]),
    ] = Field(default_factory=list, description="Reasons that must classify to this rule.")

    @model_validator(mode="after")
    def _check_policy_keys(self) -> RuleModel:
        if self.action == "retry":
            return self
        for key in ("max_attempts", "backoff", "delay", "max_age"):
            if getattr(self, key) is not None:
                raise invalid(
                    f"a {self.action} rule resends nothing, so only alert applies to it;"
                    f" remove {key}",
                    key=key,
                )
        return self


class RulesFileModel(StrictModel):
    """The retrier rules file: ordered rules, of which the first that matches wins."""

    model_config = ConfigDict(title="retrier rules file")

    version: Literal[1] = Field(description="Format version; must be 1.")
    defaults: DefaultsModel = Field(
        default_factory=lambda: DefaultsModel(),
        description="Action and policy of unmatched reasons.",
    )
    rules: list[RuleModel] = Field(
        description="Rules in order; the first that matches a reason decides."
    )


class CaseModel(StrictModel):
    """A reason and the rule and action it must get."""

    reason: TextOrBlank = Field(description="The reason's text; may be empty when code is set.")
    code: Code | None = Field(
        default=None, description="The structured code, if the reason had one."
    )
    rule: Text = Field(description="The rule expected to match, or 'default' for none.")
    action: Action = Field(description="The action expected.")


class _SchemaGenerator(GenerateJsonSchema):
    """Schema generator that leaves null out: an unset key is written by leaving it out."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        result = super().default_schema(schema)
        if result.get("default", ...) is None:
            del result["default"]
        return result


def rules_json_schema() -> dict[str, Any]:
    """Generate the JSON schema of the rules file from :class:`RulesFileModel`."""
    schema = RulesFileModel.model_json_schema(schema_generator=_SchemaGenerator)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
