# intent_ref: platform.database
"""The error that aborted a pipeline: the failed statement's, not the `PipelineAborted` of what was queued after it."""

from __future__ import annotations

import psycopg


def statement_error(exc: psycopg.errors.PipelineAborted) -> psycopg.Error:
    """The failed statement's error behind `exc`, or `exc` itself when psycopg kept none.

    psycopg reads a pipeline's results in as many passes as the server's answers arrive in, so the error it raises at
    the end is either the failed statement's or that of a statement aborted after it (a queued COMMIT), which is an
    OperationalError: "the database is unavailable" to every caller. The cause is the statement's, which psycopg
    leaves as the exception's context.
    """
    cause = exc.__context__
    if isinstance(cause, psycopg.Error) and not isinstance(cause, psycopg.errors.PipelineAborted):
        return cause.with_traceback(None)
    return exc
