# intent_ref: platform.hardening
"""The dependency audit fails on an unaccepted or expired finding and passes on an accepted one, without network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools import dependency_audit

TODAY = "2026-12-01"

# What pip-audit answers for a vulnerable pin (its JSON format; jinja2 2.10's advisory, ids as published).
PIP_VULNERABLE: dict[str, Any] = {
    "dependencies": [
        {
            "name": "jinja2",
            "version": "2.10",
            "vulns": [
                {
                    "id": "PYSEC-2019-217",
                    "fix_versions": ["2.10.1"],
                    "aliases": ["CVE-2019-10906", "GHSA-462w-v97r-4m45"],
                    "description": "In Pallets Jinja before 2.10.1, str.format_map allows a sandbox escape.",
                }
            ],
        },
        {"name": "httpx", "version": "0.28.1", "vulns": []},
    ],
    "fixes": [],
}
# Recorded on this machine: PyPI's per-release JSON is not served here, so pip-audit skips every pin.
PIP_SKIPPED: dict[str, Any] = {
    "dependencies": [
        {"name": "ecdsa", "skip_reason": "Dependency not found on PyPI and could not be audited: ecdsa (0.19.2)"},
        {"name": "old", "skip_reason": "Dependency not found on PyPI and could not be audited: old (1.0)"},
    ],
    "fixes": [],
}
# Recorded on this machine (trimmed): the project JSON, whose vulnerabilities are its latest release's.
ECDSA_PROJECT: dict[str, Any] = {
    "info": {"name": "ecdsa", "version": "0.19.2"},
    "vulnerabilities": [
        {
            "aliases": ["CVE-2024-23342", "GHSA-wj6h-64fc-37mp"],
            "details": "Minerva timing attack on P-256.",
            "fixed_in": [],
            "id": "PYSEC-2026-1325",
            "source": "osv",
            "summary": None,
            "withdrawn": None,
        },
        {
            "aliases": ["CVE-2024-23342"],
            "details": "withdrawn advisory",
            "fixed_in": [],
            "id": "PYSEC-2026-0001",
            "source": "osv",
            "summary": None,
            "withdrawn": "2026-02-01T00:00:00Z",
        },
    ],
}
OLD_PROJECT: dict[str, Any] = {"info": {"name": "old", "version": "2.0"}, "vulnerabilities": []}
# npm audit's report format (auditReportVersion 2): the advisory sits under the package, parents point at it.
NPM_VULNERABLE: dict[str, Any] = {
    "auditReportVersion": 2,
    "vulnerabilities": {
        "xml2js": {
            "name": "xml2js",
            "severity": "moderate",
            "isDirect": False,
            "via": [
                {
                    "source": 1096693,
                    "name": "xml2js",
                    "dependency": "xml2js",
                    "title": "xml2js is vulnerable to prototype pollution",
                    "url": "https://github.com/advisories/GHSA-776f-qx25-q3cc",
                    "severity": "moderate",
                    "range": "<0.5.0",
                }
            ],
            "effects": ["azurite"],
            "range": "<0.5.0",
            "nodes": ["node_modules/xml2js"],
        },
        "azurite": {
            "name": "azurite",
            "severity": "moderate",
            "isDirect": True,
            "via": ["xml2js"],
            "effects": [],
            "range": "*",
            "nodes": ["node_modules/azurite"],
        },
    },
    "metadata": {"vulnerabilities": {"moderate": 2, "total": 2}},
}
NPM_CLEAN: dict[str, Any] = {"auditReportVersion": 2, "vulnerabilities": {}, "metadata": {}}
# Recorded on this machine: the registry answers the bulk advisory endpoint with 405.
NPM_UNREACHABLE: dict[str, Any] = {
    "message": "405 Method Not Allowed - POST https://registry.npmjs.org/-/npm/v1/security/advisories/bulk",
    "method": "POST",
    "statusCode": 405,
    "body": "",
    "error": {"summary": "", "detail": ""},
}


def _audit(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    pip: dict[str, Any],
    npm: dict[str, Any],
    accepted: str = "",
    extra: tuple[str, ...] = (),
) -> tuple[int, str]:
    files = {"pip.json": pip, "npm.json": npm, "ecdsa.json": ECDSA_PROJECT, "old.json": OLD_PROJECT}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / "accepted.toml").write_text(accepted)
    code = dependency_audit.main(
        [
            "--pip-audit-report",
            str(tmp_path / "pip.json"),
            "--npm-audit-report",
            str(tmp_path / "npm.json"),
            "--accepted",
            str(tmp_path / "accepted.toml"),
            "--today",
            TODAY,
            "--pypi-project",
            f"ecdsa={tmp_path / 'ecdsa.json'}",
            "--pypi-project",
            f"old={tmp_path / 'old.json'}",
            *extra,
        ]
    )
    return code, capsys.readouterr().out


def _entry(id_: str, package: str, review_by: str = "2027-06-30", reason: str = "not reachable: unused API") -> str:
    return f'[[accepted]]\nid = "{id_}"\npackage = "{package}"\nreason = "{reason}"\nreview_by = {review_by}\n'


def test_an_unlisted_python_finding_fails_and_a_listed_one_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _audit(tmp_path, capsys, pip=PIP_VULNERABLE, npm=NPM_CLEAN)
    assert code == 1
    assert "VULNERABLE  python jinja2 2.10: PYSEC-2019-217" in out and "fixed in 2.10.1" in out

    # Listed under any of its ids (here the GHSA alias), with a package spelled as the index spells it.
    code, out = _audit(
        tmp_path, capsys, pip=PIP_VULNERABLE, npm=NPM_CLEAN, accepted=_entry("GHSA-462w-v97r-4m45", "Jinja2")
    )
    assert code == 0, out
    assert "accepted    jinja2 PYSEC-2019-217 until 2027-06-30" in out

    # The same id for another package accepts nothing.
    code, _ = _audit(
        tmp_path, capsys, pip=PIP_VULNERABLE, npm=NPM_CLEAN, accepted=_entry("GHSA-462w-v97r-4m45", "markupsafe")
    )
    assert code == 1


def test_an_acceptance_past_its_review_date_fails_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _audit(
        tmp_path,
        capsys,
        pip=PIP_VULNERABLE,
        npm=NPM_CLEAN,
        accepted=_entry("PYSEC-2019-217", "jinja2", review_by="2026-11-30"),
    )
    assert code == 1
    assert "EXPIRED" in out and "2026-11-30" in out


def test_npm_findings_are_judged_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean_pip: dict[str, Any] = {"dependencies": [], "fixes": []}
    code, out = _audit(tmp_path, capsys, pip=clean_pip, npm=NPM_VULNERABLE)
    assert code == 1
    assert "VULNERABLE  npm xml2js <0.5.0: GHSA-776F-QX25-Q3CC" in out
    assert out.count("VULNERABLE") == 1  # the parent that only points at it is not a second finding
    code, out = _audit(
        tmp_path, capsys, pip=clean_pip, npm=NPM_VULNERABLE, accepted=_entry("GHSA-776f-qx25-q3cc", "xml2js")
    )
    assert code == 0, out


def test_pins_the_per_release_source_skipped_are_audited_from_the_project_json_where_it_is_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _audit(tmp_path, capsys, pip=PIP_SKIPPED, npm=NPM_CLEAN)
    # ecdsa 0.19.2 is the latest release: its advisory counts (the withdrawn one does not). old 1.0 is not the
    # latest: the project JSON says nothing about it, so it is reported as not audited, never as clean.
    assert code == 1
    assert "VULNERABLE  python ecdsa 0.19.2: PYSEC-2026-1325" in out and "PYSEC-2026-0001" not in out
    assert "NOT AUDITED python old==1.0" in out
    code, out = _audit(tmp_path, capsys, pip=PIP_SKIPPED, npm=NPM_CLEAN, accepted=_entry("CVE-2024-23342", "ecdsa"))
    assert code == 0, out


def test_a_source_that_did_not_answer_is_reported_and_fails_only_when_sources_are_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_pip: dict[str, Any] = {"dependencies": [], "fixes": []}
    code, out = _audit(tmp_path, capsys, pip=clean_pip, npm=NPM_UNREACHABLE)
    assert code == 0
    assert "NOT AUDITED npm package-lock.json: npm audit: 405 Method Not Allowed" in out
    code, _ = _audit(tmp_path, capsys, pip=clean_pip, npm=NPM_UNREACHABLE, extra=("--require-sources",))
    assert code == 3
    # A finding still fails when a source is missing.
    code, _ = _audit(tmp_path, capsys, pip=PIP_VULNERABLE, npm=NPM_UNREACHABLE)
    assert code == 1


@pytest.mark.parametrize(
    "entry",
    [
        '[[accepted]]\nid = "X"\npackage = "p"\nreview_by = 2027-01-01\n',  # no reason
        '[[accepted]]\nid = "X"\npackage = "p"\nreason = "r"\n',  # no review date
        '[[accepted]]\nid = "X"\npackage = "p"\nreason = "r"\nreview_by = "soon"\n',
    ],
)
def test_an_accepted_entry_without_id_package_reason_and_date_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str
) -> None:
    code, _ = _audit(tmp_path, capsys, pip=PIP_VULNERABLE, npm=NPM_CLEAN, accepted=entry)
    assert code == 2


def test_the_repository_accepted_file_is_valid() -> None:
    entries = dependency_audit.load_accepted(dependency_audit.ACCEPTED_FILE)
    assert all(e.reason.strip() and e.review_by for e in entries)
