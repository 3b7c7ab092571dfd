# intent_ref: platform.quality
"""Fail when a source file lacks an `intent_ref` header naming a capability of docs/intents.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

INTENTS_FILE = Path("docs/intents.yaml")

# The comment that opens a line in each checked language.
COMMENT_PREFIXES: dict[str, str] = {".py": "#", ".tf": "#", ".sql": "--", ".bicep": "//"}

SKIPPED_DIRECTORIES = frozenset({"node_modules", ".venv", ".data"})


@dataclass
class Report:
    """What a run found: problems (one line each) and how much was checked, for the summary."""

    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    capabilities: int = 0


def _candidate_files(root: Path) -> list[str]:
    """Tracked files plus untracked files git does not ignore, so new work is checked before it is added."""
    listed: set[str] = set()
    for extra in ([], ["--others", "--exclude-standard"]):
        try:
            # Fixed arguments, git from PATH: nothing untrusted reaches the command line.
            output = subprocess.run(  # noqa: S603
                ["git", "ls-files", "-z", *extra],  # noqa: S607
                cwd=root,
                check=True,
                capture_output=True,
            ).stdout
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"cannot list files of {root} with git: {detail}") from exc
        except OSError as exc:
            raise RuntimeError(f"cannot run git: {exc}") from exc
        listed.update(name for name in output.decode("utf-8").split("\0") if name)
    return sorted(listed)


def _is_checked(relative: str) -> bool:
    path = Path(relative)
    return path.suffix in COMMENT_PREFIXES and not SKIPPED_DIRECTORIES.intersection(path.parts[:-1])


def _load_capabilities(root: Path, report: Report) -> set[str]:
    """The capability ids of docs/intents.yaml; problems with the file itself go into the report."""
    path = root / INTENTS_FILE
    where = INTENTS_FILE.as_posix()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problems.append(f"{where}: missing")
        return set()
    except yaml.YAMLError as exc:
        report.problems.append(f"{where}: not valid YAML: {exc}")
        return set()
    capabilities = document.get("capabilities") if isinstance(document, dict) else None
    if not isinstance(capabilities, list):
        report.problems.append(f"{where}: expected a top-level 'capabilities' list")
        return set()

    ids: set[str] = set()
    for position, capability in enumerate(capabilities):
        identifier = capability.get("id") if isinstance(capability, dict) else None
        if not isinstance(identifier, str) or not identifier:
            report.problems.append(f"{where}: capability #{position + 1} has no id")
            continue
        if identifier in ids:
            report.problems.append(f"{where}: duplicate capability id '{identifier}'")
        ids.add(identifier)
        tests = capability.get("tests", [])
        if not isinstance(tests, list) or not all(isinstance(test, str) for test in tests):
            report.problems.append(f"{where}: capability '{identifier}' tests must be a list of paths")
            continue
        for test in tests:
            if not (root / test).is_file():
                report.problems.append(f"{where}: capability '{identifier}' lists missing test file '{test}'")
    report.capabilities = len(ids)
    return ids


def _header_ref(path: Path, prefix: str) -> str | None:
    """The id named by the header (first line, or second after a shebang), or None without a header."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        lines = [handle.readline(), handle.readline()]
    first = lines[0].removeprefix("\ufeff")  # editors on Windows write a BOM before .bicep files
    candidate = lines[1] if first.startswith("#!") else first
    match = re.fullmatch(rf"{re.escape(prefix)}\s*intent_ref:\s*(\S+)\s*", candidate.rstrip("\r\n"))
    return match.group(1) if match else None


def check(root: Path) -> Report:
    """Check every candidate source file under `root` (a git work tree) against docs/intents.yaml."""
    report = Report()
    known = _load_capabilities(root, report)
    for relative in _candidate_files(root):
        path = root / relative
        # A tracked file deleted in the work tree is still listed by git; there is nothing to check.
        if not _is_checked(relative) or not path.is_file():
            continue
        report.files_checked += 1
        ref = _header_ref(path, COMMENT_PREFIXES[path.suffix])
        if ref is None:
            report.problems.append(f"{relative}: missing intent_ref header")
        elif ref not in known:
            report.problems.append(f"{relative}: unknown intent_ref '{ref}'")
    return report


def find_problems(root: Path) -> list[str]:
    """One line per problem found under `root`; empty when every header and listed test is in order."""
    return check(root).problems


def main(argv: list[str]) -> int:
    """Check the repository containing this file, or the folder given as the only argument."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    try:
        report = check(root)
    except RuntimeError as exc:
        print(f"check_intent_refs: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    if report.problems:
        return 1
    print(f"intent_ref: {report.files_checked} files name one of {report.capabilities} capabilities; all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
