"""Errors a user can act on.

Every failure caused by bad input or a damaged store is raised as a `SaekitError` whose message is
one line saying what is wrong and what to do. The CLI prints that line and exits with the error's
`exit_code`, never with a traceback.
"""

import errno


class SaekitError(Exception):
    """A problem the user can fix (bad input, wrong store, busy store). Exit code 2."""

    exit_code = 2


class IntegrityError(SaekitError):
    """Stored data failed an integrity check (checksum, missing or bad values). Exit code 1."""

    exit_code = 1


# What the machine refuses (not a bug in saekit): a full disk or quota, a file-size limit, a
# name too long for the file system, missing permissions, a read-only file system.
MACHINE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "ENAMETOOLONG", "EACCES", "EPERM", "EROFS")
    if hasattr(errno, name)
)
_ADVICE = {
    errno.ENOSPC: "free some space and re-run",
    errno.EFBIG: "raise the file-size limit (ulimit -f) and re-run",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def write_error(path: object, error: OSError, doing: str = "write") -> SaekitError:
    """One line for an OS error met while writing `path`: the path, the cause, what to do."""
    cause = error.strerror or str(error) or type(error).__name__
    advice = _ADVICE.get(
        error.errno or 0, "fix that (free space, permissions) or choose another --out, and re-run"
    )
    if getattr(errno, "EDQUOT", None) == error.errno:
        advice = _ADVICE[errno.ENOSPC]
    return SaekitError(f"cannot {doing} {path}: {cause}; {advice}")
