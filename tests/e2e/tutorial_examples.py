# intent_ref: platform.gateway
"""The tutorial's client examples as code that runs: read from examples/tutorial/seed_examples.txt (the tutorial's
own text, whose indentation was lost), indented back by Python's block rules, compiled with top-level `await`."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

SEED_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tutorial" / "seed_examples.txt"
_CONTINUATIONS = ("elif ", "else:", "except", "finally:")
_OPEN, _CLOSE = "([{", ")]}"


def examples() -> dict[str, list[str]]:
    """The examples' lines as the tutorial has them, by number ("1", "2", "3")."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in SEED_EXAMPLES.read_text(encoding="utf-8").splitlines():
        if line.startswith("## Example "):
            current = blocks.setdefault(line.removeprefix("## Example ").strip(), [])
        elif current is not None:
            current.append(line)
    return blocks


def indent(lines: list[str]) -> str:
    """Indentation back: a line ending in `:` (outside brackets) opens a block; `elif`/`else`/`except`/`finally`
    close the block above; inside brackets lines continue the statement. Enough for the tutorial's examples, and
    `compile` refuses anything it gets wrong."""
    out: list[str] = []
    level = depth = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if depth == 0 and line.startswith(_CONTINUATIONS):
            level -= 1
        out.append("    " * (level + (1 if depth else 0)) + line)
        code = line.split("#", 1)[0] if not line.startswith("#") else ""
        depth += sum(code.count(c) for c in _OPEN) - sum(code.count(c) for c in _CLOSE)
        if depth == 0 and code.rstrip().endswith(":"):
            level += 1
    return "\n".join(out) + "\n"


async def run(number: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run example `number` in `namespace` (which provides `client` and what earlier examples defined)."""
    source = indent(examples()[number])
    code = compile(source, f"<tutorial example {number}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # noqa: S307  # the repository's own copy of the tutorial's examples
    if result is not None:
        await result
    return namespace
