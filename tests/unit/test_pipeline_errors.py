# intent_ref: platform.database
"""The error a failed pipeline reports is its failed statement's, never the aborted COMMIT queued after it."""

from __future__ import annotations

import psycopg
import pytest

from shared.db.pipeline_errors import statement_error


def _aborted_after(cause: BaseException | None) -> psycopg.errors.PipelineAborted:
    # As psycopg raises it when the statement's error was read in an earlier pass: inside the handling of that error.
    try:
        try:
            if cause is not None:
                raise cause
        finally:
            raise psycopg.errors.PipelineAborted("pipeline aborted")
    except psycopg.errors.PipelineAborted as exc:
        return exc


def test_the_failed_statements_error_is_the_one_reported() -> None:
    aborted = _aborted_after(psycopg.errors.DivisionByZero("division by zero"))
    assert isinstance(aborted, psycopg.OperationalError)  # what callers would take for an unreachable database
    reported = statement_error(aborted)
    assert isinstance(reported, psycopg.errors.DivisionByZero)
    assert not isinstance(reported, psycopg.OperationalError)


@pytest.mark.parametrize(
    "cause",
    [None, ValueError("not a database error"), psycopg.errors.PipelineAborted("an earlier abort")],
    ids=["no-cause", "not-psycopg", "another-abort"],
)
def test_without_a_statements_error_the_abort_itself_is_reported(cause: BaseException | None) -> None:
    aborted = _aborted_after(cause)
    assert statement_error(aborted) is aborted
