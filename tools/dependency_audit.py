# intent_ref: platform.hardening
"""Dependency audit: pip-audit over the pinned requirement files and npm audit over package-lock.json."""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt", "requirements-iac.txt", "requirements-audit.txt")
ACCEPTED_FILE = ROOT / "security" / "accepted-vulnerabilities.toml"
PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"
REQUIRE_SOURCES_ENV = "QP_AUDIT_REQUIRE_SOURCES"

# pip-audit's words for "the vulnerability service did not answer for this pin" (PyPI's per-release JSON missing).
_NOT_FOUND = re.compile(r"not found on PyPI.*?:\s*(?P<name>[^\s(]+)\s*\((?P<version>[^)]+)\)\s*$", re.IGNORECASE)
_ADVISORY_URL = re.compile(r"/(?P<id>GHSA-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4})\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One advisory that applies to one pinned package version."""

    ecosystem: str
    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fixed_in: tuple[str, ...] = ()
    summary: str = ""

    @property
    def ids(self) -> set[str]:
        return {self.id.upper(), *(alias.upper() for alias in self.aliases)}


@dataclasses.dataclass(frozen=True)
class Unaudited:
    """What could not be audited, and why (a source that did not answer is not a clean bill of health)."""

    ecosystem: str
    what: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A finding accepted on purpose, until its review date."""

    id: str
    package: str
    reason: str
    review_by: datetime.date

    def matches(self, finding: Finding) -> bool:
        return _normalise(self.package) == _normalise(finding.package) and self.id.upper() in finding.ids


@dataclasses.dataclass
class Verdict:
    unaccepted: list[Finding]
    expired: list[tuple[Finding, Accepted]]
    accepted: list[tuple[Finding, Accepted]]
    unused: list[Accepted]

    @property
    def failed(self) -> bool:
        return bool(self.unaccepted or self.expired)


class AcceptedFileError(ValueError):
    """The accepted-findings file is malformed: every entry needs id, package, reason and review_by."""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------ accepted findings
def load_accepted(path: Path) -> list[Accepted]:
    """Read `[[accepted]]` entries; a missing file means nothing is accepted."""
    if not path.exists():
        return []
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = document.get("accepted", [])
    if not isinstance(entries, list):
        raise AcceptedFileError(f"{path}: `accepted` must be an array of tables")
    accepted = []
    for index, entry in enumerate(entries):
        where = f"{path}: accepted[{index}]"
        if not isinstance(entry, dict):
            raise AcceptedFileError(f"{where} is not a table")
        missing = [k for k in ("id", "package", "reason", "review_by") if not entry.get(k)]
        if missing:
            raise AcceptedFileError(f"{where} lacks {', '.join(missing)}")
        review_by = entry["review_by"]
        if isinstance(review_by, str):
            try:
                review_by = datetime.date.fromisoformat(review_by)
            except ValueError:
                raise AcceptedFileError(f"{where}: review_by {review_by!r} is not a date") from None
        if not isinstance(review_by, datetime.date):
            raise AcceptedFileError(f"{where}: review_by must be a date (YYYY-MM-DD)")
        accepted.append(Accepted(str(entry["id"]), str(entry["package"]), str(entry["reason"]), review_by))
    return accepted


def judge(findings: Iterable[Finding], accepted: Sequence[Accepted], today: datetime.date) -> Verdict:
    """Every finding must be accepted by an entry whose review date has not passed."""
    verdict = Verdict([], [], [], [])
    used: set[int] = set()
    for finding in findings:
        matches = [(i, entry) for i, entry in enumerate(accepted) if entry.matches(finding)]
        used.update(i for i, _ in matches)
        current = [entry for _, entry in matches if entry.review_by >= today]
        if current:
            verdict.accepted.append((finding, current[0]))
        elif matches:
            verdict.expired.append((finding, matches[0][1]))
        else:
            verdict.unaccepted.append(finding)
    verdict.unused = [entry for i, entry in enumerate(accepted) if i not in used]
    return verdict


# ------------------------------------------------------------------------------------------ Python (pip-audit)
def run_pip_audit(pip_audit: str, files: Sequence[Path]) -> dict[str, Any]:
    """pip-audit over the pins only: no resolver, no environment built (the files pin every top-level package)."""
    command = [pip_audit, "--no-deps", "--disable-pip", "--format", "json", "--progress-spinner", "off"]
    for path in files:
        command += ["-r", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)  # noqa: S603
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        # A source that cannot be reached at all: reported as not audited, never taken for "no findings".
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"pip-audit gave no report (exit {done.returncode}): {last[:500]}"}
    return report


def pip_audit_findings(report: dict[str, Any]) -> tuple[list[Finding], list[tuple[str, str]], list[Unaudited]]:
    """(findings, pins the service had no data for, other skipped dependencies) from a pip-audit JSON report."""
    findings: list[Finding] = []
    not_found: list[tuple[str, str]] = []
    skipped: list[Unaudited] = []
    if "error" in report:
        return [], [], [Unaudited("python", "requirement files", str(report["error"]))]
    for dependency in report.get("dependencies", []):
        name, version = str(dependency.get("name", "")), str(dependency.get("version", ""))
        reason = dependency.get("skip_reason")
        if reason:
            match = _NOT_FOUND.search(str(reason))
            if match:
                not_found.append((match["name"], match["version"]))
            else:
                skipped.append(Unaudited("python", name, str(reason)))
            continue
        for vuln in dependency.get("vulns", []):
            findings.append(
                Finding(
                    "python",
                    name,
                    version,
                    str(vuln["id"]),
                    tuple(vuln.get("aliases", [])),
                    tuple(vuln.get("fix_versions", [])),
                    str(vuln.get("description", ""))[:200],
                )
            )
    return findings, not_found, skipped


def pypi_latest_release_findings(name: str, version: str, project: dict[str, Any]) -> list[Finding] | Unaudited:
    """The project JSON's vulnerabilities are those of its latest release: complete for a pin that is the latest."""
    latest = str(project.get("info", {}).get("version", ""))
    if latest != version:
        return Unaudited(
            "python",
            f"{name}=={version}",
            f"PyPI's per-release JSON did not answer; its project JSON covers only the latest ({latest})",
        )
    return [
        Finding(
            "python",
            name,
            version,
            str(v["id"]),
            tuple(v.get("aliases") or ()),
            tuple(v.get("fixed_in") or ()),
            str(v.get("summary") or v.get("details") or "")[:200],
        )
        for v in project.get("vulnerabilities") or []
        if not v.get("withdrawn")
    ]


def fetch_project(name: str) -> dict[str, Any]:
    with urllib.request.urlopen(PYPI_PROJECT_JSON.format(name=name), timeout=60) as response:  # noqa: S310
        project: dict[str, Any] = json.load(response)
    return project


def fallback_to_project_json(pins: Sequence[tuple[str, str]]) -> tuple[list[Finding], list[Unaudited]]:
    """Audit what the per-release source left out through the project JSON, where that is complete."""
    findings: list[Finding] = []
    unaudited: list[Unaudited] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        projects = {pin: pool.submit(fetch_project, pin[0]) for pin in sorted(set(pins))}
        for (name, version), future in projects.items():
            try:
                result = pypi_latest_release_findings(name, version, future.result())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                unaudited.append(Unaudited("python", f"{name}=={version}", f"PyPI project JSON: {exc}"))
                continue
            if isinstance(result, Unaudited):
                unaudited.append(result)
            else:
                findings += result
    return findings, unaudited


# ------------------------------------------------------------------------------------------ npm (npm audit)
def run_npm_audit(npm: str) -> dict[str, Any]:
    """The whole lock, dev dependencies included: every npm package here is a dev tool that runs on our machines."""
    done = subprocess.run(  # noqa: S603  # our own command line
        [npm, "audit", "--package-lock-only", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {
            "error": {"summary": f"npm audit gave no JSON (exit {done.returncode})", "detail": done.stderr[-2000:]}
        }
    return report


def npm_audit_findings(report: dict[str, Any]) -> tuple[list[Finding], list[Unaudited]]:
    """Advisories from an `npm audit --json` report (v2 format); an error report means nothing was audited."""
    if "vulnerabilities" not in report:
        error = report.get("error") or {}
        reason = report.get("message") or (error.get("summary") if isinstance(error, dict) else error) or "no report"
        return [], [Unaudited("npm", "package-lock.json", f"npm audit: {reason}")]
    findings: dict[tuple[str, str], Finding] = {}
    for entry in report["vulnerabilities"].values():
        for via in entry.get("via", []):
            if not isinstance(via, dict):
                continue  # a name: the advisory is listed under that package itself
            url = str(via.get("url", ""))
            match = _ADVISORY_URL.search(url)
            advisory = match["id"].upper() if match else f"NPM-{via.get('source')}"
            package = str(via.get("name", entry.get("name", "")))
            findings[(advisory, package)] = Finding(
                "npm",
                package,
                str(via.get("range", "")),
                advisory,
                (f"NPM-{via.get('source')}",),
                (),
                str(via.get("title", "")),
            )
    return list(findings.values()), []


# ------------------------------------------------------------------------------------------ report
def _describe(finding: Finding) -> str:
    fixed = f"; fixed in {', '.join(finding.fixed_in)}" if finding.fixed_in else ""
    aliases = f" ({', '.join(finding.aliases)})" if finding.aliases else ""
    return f"{finding.ecosystem} {finding.package} {finding.version}: {finding.id}{aliases}{fixed} {finding.summary}"


def report(verdict: Verdict, unaudited: Sequence[Unaudited], out: Any) -> None:
    for finding in verdict.unaccepted:
        print(f"VULNERABLE  {_describe(finding)}", file=out)
    for finding, entry in verdict.expired:
        print(f"EXPIRED     {_describe(finding)} (accepted until {entry.review_by}: review it)", file=out)
    for finding, entry in verdict.accepted:
        print(f"accepted    {finding.package} {finding.id} until {entry.review_by}: {entry.reason}", file=out)
    for entry in verdict.unused:
        print(f"unused      accepted entry {entry.package} {entry.id} matches no finding: remove it", file=out)
    for item in unaudited:
        print(f"NOT AUDITED {item.ecosystem} {item.what}: {item.reason}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pip-audit", default=str(ROOT / ".venv-audit" / "bin" / "pip-audit"))
    parser.add_argument("--npm", default="npm")
    parser.add_argument("--accepted", type=Path, default=ACCEPTED_FILE)
    parser.add_argument(
        "--pip-audit-report",
        type=Path,
        action="append",
        default=[],
        help="judge this recorded pip-audit JSON report instead of running pip-audit",
    )
    parser.add_argument("--npm-audit-report", type=Path, help="judge this recorded npm audit JSON report instead")
    parser.add_argument(
        "--pypi-project",
        action="append",
        default=[],
        help="a recorded PyPI project JSON to use instead of fetching it (NAME=PATH)",
    )
    parser.add_argument("--no-fallback", action="store_true", help="do not ask PyPI's project JSON")
    parser.add_argument(
        "--require-sources",
        action="store_true",
        default=os.environ.get(REQUIRE_SOURCES_ENV, "") in ("1", "true"),
        help=f"fail when a source could not be audited (also ${REQUIRE_SOURCES_ENV}=1)",
    )
    parser.add_argument("--today", type=datetime.date.fromisoformat, default=datetime.date.today())
    args = parser.parse_args(argv)

    try:
        accepted = load_accepted(args.accepted)
    except (AcceptedFileError, tomllib.TOMLDecodeError) as exc:
        print(f"dependency audit: {exc}", file=sys.stderr)
        return 2

    reports = [json.loads(p.read_text()) for p in args.pip_audit_report] or [
        run_pip_audit(args.pip_audit, [ROOT / name for name in REQUIREMENT_FILES])
    ]
    findings: list[Finding] = []
    unaudited: list[Unaudited] = []
    not_found: list[tuple[str, str]] = []
    for pip_report in reports:
        found, missing, skipped = pip_audit_findings(pip_report)
        findings, not_found, unaudited = findings + found, not_found + missing, unaudited + skipped
    if not_found and args.pypi_project:
        recorded = dict(item.split("=", 1) for item in args.pypi_project)
        for name, version in sorted(set(not_found)):
            if name in recorded:
                result = pypi_latest_release_findings(name, version, json.loads(Path(recorded[name]).read_text()))
            else:
                result = Unaudited("python", f"{name}=={version}", "no recorded project JSON")
            if isinstance(result, Unaudited):
                unaudited.append(result)
            else:
                findings += result
    elif not_found and not args.no_fallback:
        found, missing_data = fallback_to_project_json(not_found)
        findings, unaudited = findings + found, unaudited + missing_data
    elif not_found:
        unaudited += [Unaudited("python", f"{n}=={v}", "PyPI's per-release JSON did not answer") for n, v in not_found]

    npm_report = json.loads(args.npm_audit_report.read_text()) if args.npm_audit_report else run_npm_audit(args.npm)
    found, missing_npm = npm_audit_findings(npm_report)
    findings, unaudited = findings + found, unaudited + missing_npm

    unique = list({(f.ecosystem, _normalise(f.package), f.version, f.id): f for f in findings}.values())
    verdict = judge(unique, accepted, args.today)
    report(verdict, unaudited, sys.stdout)
    audited = len(unique)
    print(
        f"dependency audit: {audited} finding(s), {len(verdict.unaccepted)} not accepted, "
        f"{len(verdict.expired)} expired, {len(unaudited)} not audited"
    )
    if verdict.failed:
        return 1
    if unaudited and args.require_sources:
        print(f"dependency audit: sources unavailable and {REQUIRE_SOURCES_ENV} is set", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
