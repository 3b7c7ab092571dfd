# intent_ref: platform.estate
"""The task hub each stack names by default is one the app accepts, for every environment name the stacks accept
(azd names carry hyphens: qp-dev)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from pydantic import TypeAdapter, ValidationError

from shared.config import Settings
from tests.infra.conftest import BicepFile, TerraformModule

# Plain, with a hyphen, and the longest the stacks accept (16 characters).
ENVIRONMENT_NAMES = ["dev", "qp-dev", "qp-dev-westeu-01"]


def _coalesce(*values: str | None) -> str | None:
    """Terraform's coalesce: the first value that is neither null nor empty."""
    return next((value for value in values if value not in (None, "")), None)


def _replace(text: str, old: str, new: str) -> str:
    """replace() of both dialects, for a literal search string (Terraform reads /.../ as a regex)."""
    assert not (old.startswith("/") and old.endswith("/")), "regex replace is not evaluated here"
    return text.replace(old, new)


FUNCTIONS: dict[str, Callable[..., str | None]] = {
    "coalesce": _coalesce,
    "replace": _replace,
    "toLower": str.lower,
    "lower": str.lower,
}


class _Expression:
    """Evaluates the string expressions the stacks write: literals, interpolation, references and FUNCTIONS.

    Anything else (an unknown function or name) fails the test rather than being guessed at."""

    def __init__(self, text: str, quote: str, names: dict[str, str | None]) -> None:
        """Evaluate `text` with string literals in `quote` and the references in `names`."""
        self.text, self.quote, self.names, self.pos = text, quote, names, 0

    def template(self, end: str | None = None) -> str | None:
        """A string body up to `end` (the closing quote; None: the end of the text); a lone ${x} is x itself."""
        parts: list[str | None] = []
        while self.pos < len(self.text) and self.text[self.pos] != end:
            if self.text.startswith("${", self.pos):
                self.pos += 2
                parts.append(self.expression())
                self._expect("}")
            else:
                if self.text[self.pos] == "\\":
                    self.pos += 1
                parts.append(self.text[self.pos])
                self.pos += 1
        if len(parts) == 1 and end is None:
            return parts[0]
        assert None not in parts, f"null interpolated in {self.text!r}"
        return "".join(part for part in parts if part is not None)

    def expression(self) -> str | None:
        """A string literal, a reference or a function call."""
        self._skip_space()
        if self.text[self.pos] == self.quote:
            self.pos += 1
            value = self.template(self.quote)
            self._expect(self.quote)
            return value
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*").match(self.text, self.pos)
        assert match, f"cannot read {self.text[self.pos :]!r}"
        self.pos = match.end()
        if not self.text.startswith("(", self.pos):
            return self.names[match.group()]
        self.pos += 1
        arguments = []
        while True:
            arguments.append(self.expression())
            self._skip_space()
            if self.text.startswith(")", self.pos):
                self.pos += 1
                return FUNCTIONS[match.group()](*arguments)
            self._expect(",")

    def _expect(self, token: str) -> None:
        """Step over `token`, which must come next."""
        self._skip_space()
        assert self.text.startswith(token, self.pos), f"expected {token!r} at {self.text[self.pos :]!r}"
        self.pos += len(token)

    def _skip_space(self) -> None:
        """Step over blanks between tokens."""
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1


def _app_accepts(task_hub: str | None) -> None:
    """Validate as the app does when it loads QP_TASK_HUB (the field's own constraints from shared/config.py)."""
    field = Settings.model_fields["QP_TASK_HUB"]
    assert field.annotation is str
    TypeAdapter(Annotated[str, field]).validate_python(task_hub)


def _bicep_default(bicep_main: BicepFile, environment_name: str) -> str | None:
    """bicep/main.bicep's default of taskHubName for that environment name."""
    default: Any = bicep_main.parsed["parameters"]["taskHubName"]["default"]
    assert isinstance(default, str), default
    return _Expression(default, "'", {"environmentName": environment_name}).template()


def _terraform_default(tf_root: TerraformModule, environment_name: str) -> str | None:
    """terraform/'s local.task_hub_name for that environment name, task_hub_name left at its default."""
    names = {
        "var.environment_name": environment_name,
        "var.task_hub_name": tf_root.variables["task_hub_name"]["default"],
    }
    return _Expression(tf_root.locals["task_hub_name"], '"', names).template()


@pytest.mark.parametrize("environment_name", ENVIRONMENT_NAMES)
def test_the_stacks_accept_the_environment_name(
    environment_name: str, bicep_main: BicepFile, tf_root: TerraformModule
) -> None:
    """The names above are ones a deployment may use, so the defaults below are reachable."""
    (validation,) = tf_root.variables["environment_name"]["validation"]
    pattern = re.search(r'regex\("([^"]+)", var\.environment_name\)', validation["condition"])
    assert pattern and re.search(pattern.group(1), environment_name)
    decorators = {
        item["type"]: item.get("argument") for item in bicep_main.parsed["parameters"]["environmentName"]["decorators"]
    }
    assert decorators["min_length"] <= len(environment_name) <= decorators["max_length"]


@pytest.mark.parametrize("environment_name", ENVIRONMENT_NAMES)
def test_the_bicep_default_task_hub_passes_the_apps_settings(environment_name: str, bicep_main: BicepFile) -> None:
    _app_accepts(_bicep_default(bicep_main, environment_name))


@pytest.mark.parametrize("environment_name", ENVIRONMENT_NAMES)
def test_the_terraform_default_task_hub_passes_the_apps_settings(
    environment_name: str, tf_root: TerraformModule
) -> None:
    _app_accepts(_terraform_default(tf_root, environment_name))


def test_both_stacks_default_to_the_same_task_hub(bicep_main: BicepFile, tf_root: TerraformModule) -> None:
    for environment_name in ENVIRONMENT_NAMES:
        assert _bicep_default(bicep_main, environment_name) == _terraform_default(tf_root, environment_name)


def test_the_app_refuses_a_task_hub_with_a_hyphen() -> None:
    """The check above is the app's own: a hyphen fails it."""
    with pytest.raises(ValidationError):
        _app_accepts("Quantumqp-dev")
