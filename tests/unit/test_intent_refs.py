# intent_ref: platform.quality
"""The intent_ref check, run against throwaway git repositories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.check_intent_refs import find_problems

CHECKER = Path(__file__).resolve().parents[2] / "tools" / "check_intent_refs.py"

INTENTS = """\
capabilities:
  - id: demo.alpha
    summary: Alpha.
    tests: [tests/test_alpha.py]
  - id: demo.beta
    summary: Beta.
    tests: []
"""


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree with a valid intents file and the test file it lists: no problems yet."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _write(tmp_path, "docs/intents.yaml", INTENTS)
    _write(tmp_path, "tests/test_alpha.py", "# intent_ref: demo.alpha\n")
    return tmp_path


def test_clean_repository_has_no_problems(repo: Path) -> None:
    _write(repo, "pkg/mod.py", '# intent_ref: demo.beta\n"""Doc."""\n')
    assert find_problems(repo) == []


def test_missing_header_is_reported(repo: Path) -> None:
    _write(repo, "pkg/mod.py", '"""No header."""\n# intent_ref: demo.alpha\n')
    assert find_problems(repo) == ["pkg/mod.py: missing intent_ref header"]


def test_empty_file_has_no_header(repo: Path) -> None:
    _write(repo, "pkg/__init__.py", "")
    assert find_problems(repo) == ["pkg/__init__.py: missing intent_ref header"]


def test_unknown_id_is_reported(repo: Path) -> None:
    _write(repo, "pkg/mod.py", "# intent_ref: demo.gamma\n")
    assert find_problems(repo) == ["pkg/mod.py: unknown intent_ref 'demo.gamma'"]


def test_header_after_shebang_is_accepted_but_only_there(repo: Path) -> None:
    _write(repo, "bin/tool.py", "#!/usr/bin/env python3\n# intent_ref: demo.alpha\n")
    _write(repo, "bin/late.py", "# coding: utf-8\n# intent_ref: demo.alpha\n")
    _write(repo, "bin/third.py", "#!/usr/bin/env python3\n\n# intent_ref: demo.alpha\n")
    assert find_problems(repo) == [
        "bin/late.py: missing intent_ref header",
        "bin/third.py: missing intent_ref header",
    ]


@pytest.mark.parametrize(
    ("relative", "good", "wrong_style"),
    [
        ("db/0001_init.sql", "-- intent_ref: demo.alpha\n", "# intent_ref: demo.alpha\n"),
        ("infra/main.bicep", "// intent_ref: demo.alpha\n", "# intent_ref: demo.alpha\n"),
        ("infra/main.tf", "# intent_ref: demo.alpha\n", "-- intent_ref: demo.alpha\n"),
    ],
)
def test_comment_style_per_language(repo: Path, relative: str, good: str, wrong_style: str) -> None:
    _write(repo, relative, good + "body\n")
    assert find_problems(repo) == []
    _write(repo, relative, wrong_style + "body\n")
    assert find_problems(repo) == [f"{relative}: missing intent_ref header"]


def test_bom_and_crlf_are_tolerated(repo: Path) -> None:
    (repo / "infra").mkdir()
    (repo / "infra/main.bicep").write_bytes(b"\xef\xbb\xbf// intent_ref: demo.alpha\r\nparam x string\r\n")
    assert find_problems(repo) == []


def test_other_file_types_are_not_checked(repo: Path) -> None:
    _write(repo, "README.md", "no header\n")
    _write(repo, "settings.json", "{}\n")
    assert find_problems(repo) == []


def test_ignored_and_vendored_folders_are_skipped(repo: Path) -> None:
    _write(repo, ".gitignore", "build/\n")
    _write(repo, "build/gen.py", "generated\n")
    _write(repo, "node_modules/pkg/x.py", "vendored\n")
    _write(repo, ".venv/lib/site.py", "venv\n")
    _write(repo, ".data/pg/x.sql", "data\n")
    assert find_problems(repo) == []
    # The skip is by folder name, not a blanket pass: a bad file beside them is still found.
    _write(repo, "src/bad.py", "x = 1\n")
    assert find_problems(repo) == ["src/bad.py: missing intent_ref header"]


def test_tracked_file_is_checked_and_deleted_tracked_file_is_not(repo: Path) -> None:
    _write(repo, "pkg/tracked.py", "x = 1\n")
    _write(repo, "pkg/gone.py", "x = 1\n")
    subprocess.run(["git", "add", "pkg"], cwd=repo, check=True)
    (repo / "pkg/gone.py").unlink()
    assert find_problems(repo) == ["pkg/tracked.py: missing intent_ref header"]


def test_missing_listed_test_file_is_reported(repo: Path) -> None:
    (repo / "tests/test_alpha.py").unlink()
    assert find_problems(repo) == [
        "docs/intents.yaml: capability 'demo.alpha' lists missing test file 'tests/test_alpha.py'"
    ]


def test_malformed_intents_file_is_reported(repo: Path) -> None:
    _write(repo, "docs/intents.yaml", "capabilities:\n- summary: no id\n- id: demo.alpha\n- id: demo.alpha\n")
    _write(repo, "pkg/mod.py", "# intent_ref: demo.alpha\n")
    assert find_problems(repo) == [
        "docs/intents.yaml: capability #1 has no id",
        "docs/intents.yaml: duplicate capability id 'demo.alpha'",
    ]


def test_command_line_exit_codes_and_output(repo: Path) -> None:
    ok = subprocess.run([sys.executable, str(CHECKER), str(repo)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(ok.stdout.splitlines()) == 1 and "all ok" in ok.stdout

    _write(repo, "pkg/a.py", "# intent_ref: nope\n")
    _write(repo, "pkg/b.sql", "select 1;\n")
    bad = subprocess.run([sys.executable, str(CHECKER), str(repo)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "pkg/a.py: unknown intent_ref 'nope'",
        "pkg/b.sql: missing intent_ref header",
    ]


def test_not_a_git_repository_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stop git's upward search here, in case the temporary folder sits inside some work tree.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    _write(tmp_path, "docs/intents.yaml", INTENTS)
    with pytest.raises(RuntimeError, match="git"):
        find_problems(tmp_path)
    result = subprocess.run([sys.executable, str(CHECKER), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
