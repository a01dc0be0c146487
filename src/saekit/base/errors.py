"""Errors a user can act on.

Every failure caused by bad input or a damaged store is raised as a `SaekitError` whose message is
one line saying what is wrong and what to do. The CLI prints that line and exits with the error's
`exit_code`, never with a traceback.
"""


class SaekitError(Exception):
    """A problem the user can fix (bad input, wrong store, busy store). Exit code 2."""

    exit_code = 2


class IntegrityError(SaekitError):
    """Stored data failed an integrity check (checksum, missing or bad values). Exit code 1."""

    exit_code = 1
