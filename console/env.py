"""Read settings from environment variables, failing loudly on a bad value."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import stat
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def envbool(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0/true/false, not {value!r}")


def envint(name: str, default: str, *, minimum: int | None = None) -> int:
    value = os.environ.get(name, default)
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value!r}")
    return number


def envfloat(
    name: str, default: str, *, above: float | None = None, maximum: float | None = None
) -> float:
    """A number; with bounds, also finite (float() takes "nan" and "inf") and within them."""
    value = os.environ.get(name, default)
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if above is None and maximum is None:
        return number
    if not math.isfinite(number) or (above is not None and number <= above):
        raise ImproperlyConfigured(f"{name} must be a number above {above:g}, not {value!r}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum:g}, not {value!r}")
    return number


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def kept_secret(path: Path) -> str:
    """The random key kept in ``path``, made on first use; readable by its owner only.

    The file is created 0600 from the start (never chmod'ed after a window in
    which it was readable), under a temporary name, and linked into place: two
    processes starting at once (daphne, qcluster, a command) both end up with
    the one key that landed, never a half-written file.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(50) + "\n")
            file.flush()
            os.fsync(file.fileno())
        # Another process may have made it first: everyone uses that one.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    try:
        with open(path) as file:
            mode = os.fstat(file.fileno()).st_mode
            value = file.read().strip()
    except FileNotFoundError:
        raise  # kept_secret makes it
    except OSError as exc:
        raise ImproperlyConfigured(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ImproperlyConfigured(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    if len(value) < 32:
        raise ImproperlyConfigured(
            f"{path} holds no usable key (under 32 characters); delete it to make a new one"
        )
    return value
