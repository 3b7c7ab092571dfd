#!/usr/bin/env bash
# Offline IaC checks: checkov over bicep/ and terraform/ (no failed check; every skip carries its reason in the
# file) and `terraform fmt -check`. Compiling Bicep and `terraform init/validate/plan` need internet access and
# run in the deploy workflow instead (docs/runbooks/deploy.md).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV="${CHECKOV:-.venv-iac/bin/checkov}"
TERRAFORM="${TERRAFORM:-terraform}"
PYTHON="${PYTHON:-.venv-iac/bin/python}"
status=0

scan() {  # scan <directory> <framework>
    local dir="$1" framework="$2" report
    report="$(mktemp)"
    # BC_SKIP_MAPPING: do not fetch guideline mappings from the vendor API (no internet here). checkov exits 1 on
    # any failed check; the verdict is taken from its JSON report below, which also catches skips without reasons.
    BC_SKIP_MAPPING=TRUE "$CHECKOV" -d "$dir" --framework "$framework" --skip-download --output json \
        >"$report" 2>"$report.err" || true
    if ! "$PYTHON" - "$report" "$dir" "$framework" <<'PY'
import json, sys
path, directory, framework = sys.argv[1:4]
with open(path, encoding="utf-8") as handle:
    data = json.load(handle)
reports = data if isinstance(data, list) else [data]
failed, passed, skipped, unexplained, parse_errors = [], 0, 0, [], 0
for report in reports:
    summary = report.get("summary", {})
    parse_errors += summary.get("parsing_errors", 0)
    results = report.get("results", {})
    passed += len(results.get("passed_checks", []))
    for check in results.get("skipped_checks", []):
        skipped += 1
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        if not reason.strip() or reason == "No comment provided":
            unexplained.append(f"{check['check_id']} {check['resource']} ({check['file_path']})")
    for check in results.get("failed_checks", []):
        failed.append(f"{check['check_id']} {check['resource']} ({check['file_path']}:{check['file_line_range']})"
                      f" {check.get('check_name', '')}")
print(f"checkov {framework} {directory}: {passed} passed, {len(failed)} failed, {skipped} skipped"
      f" ({len(unexplained)} without a reason), {parse_errors} parsing errors")
for line in failed:
    print(f"  FAILED {line}")
for line in unexplained:
    print(f"  SKIP WITHOUT REASON {line}")
sys.exit(1 if failed or unexplained or parse_errors else 0)
PY
    then
        status=1
    fi
    if [[ $status -ne 0 && -s "$report.err" ]]; then tail -n 20 "$report.err"; fi
    rm -f "$report" "$report.err"
}

scan bicep bicep
scan terraform terraform

if "$TERRAFORM" fmt -check -recursive terraform >/dev/null; then
    echo "terraform fmt: clean"
else
    echo "terraform fmt: files need formatting:"
    "$TERRAFORM" fmt -check -recursive -list=true terraform || true
    status=1
fi

exit "$status"
