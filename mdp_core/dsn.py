"""DSN helpers: never show a password, and describe a DSN for error messages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DsnInfo", "describe_dsn", "mask_dsn", "mask_secrets", "scrub"]

# user:password@ in any URL-style DSN, and password=... in key/value DSNs or query strings.
# A URL's password runs to the last "@" before white space, so one holding a raw "@", "#",
# "?" or "/" (an unencoded "p@ss#1") is masked whole; an unquoted key/value password runs to
# white space, a quoted one ('it\'s a secret', libpq's syntax) to its closing quote. When in
# doubt, more is masked, never less.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>\S*)@", re.I)
_KV_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s'][^\s]*)", re.I
)


def mask_secrets(text: str) -> str:
    """Replace every password that looks like part of a DSN in ``text`` with ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m.group('head')}***", text)


def mask_dsn(dsn: str | None) -> str:
    """The DSN with its password replaced by ``***`` (safe to print or log)."""
    return mask_secrets(dsn or "")


@dataclass(frozen=True, slots=True)
class DsnInfo:
    host: str
    port: int | None
    database: str
    user: str

    def __str__(self) -> str:
        where = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"host {where}, database {self.database!r}, user {self.user!r}"


def describe_dsn(dsn: str) -> DsnInfo:
    """Host, port, database and user of a ``postgresql://`` DSN (never the password).

    Raises ``ValueError`` naming what is wrong (without echoing a password)."""
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed PostgreSQL DSN {mask_dsn(dsn)!r}: {exc}") from None
    scheme = parts.scheme.split("+")[0]
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(
            f"malformed PostgreSQL DSN {mask_dsn(dsn)!r}: expected a postgresql:// URL"
        )
    query = parse_qs(parts.query)
    host = unquote(parts.hostname or "") or query.get("host", ["localhost"])[0]
    if port is None and "port" in query:
        try:
            port = int(query["port"][0])
        except ValueError:
            raise ValueError(f"malformed PostgreSQL DSN {mask_dsn(dsn)!r}: bad port") from None
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
    user = unquote(parts.username or "") or query.get("user", [""])[0]
    return DsnInfo(host=host, port=port, database=database or user or "postgres", user=user)


def _hidden_passwords(dsn: str) -> list[str]:
    """Every substring of ``dsn`` that may be its password (even when the DSN is malformed)."""
    found: list[str] = []
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]  # as written, and as a server may echo it
    # user:PASSWORD@ up to the last "@", for URLs urlsplit cannot read
    match = re.search(r"://[^:/@]*:(.*)@", dsn)
    if match and match.group(1):
        found.append(match.group(1))
    for match in _KV_PASSWORD.finditer(dsn):
        value = match.group("pw")
        found.append(value)
        if value.startswith("'"):  # the quoted value, unquoted and unescaped
            found.append(re.sub(r"\\(.)", r"\1", value.strip("'")))
        else:
            found += [v for v in (value.split("&")[0], unquote(value.split("&")[0])) if v]
    # user:PASSWORD@ in a mistyped URL ("postgresql:/u:pw@host", "postgresql//u:pw@host"),
    # which servers may echo back as a database or host name
    head, at, _ = dsn.rpartition("@")
    candidate = head.rpartition(":")[2]
    if at and candidate and "/" not in candidate:
        found.append(candidate)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, dsn: str) -> str:
    """``text`` with every possible password of ``dsn`` replaced by ``***`` (even when the
    DSN is mistyped and a server echoes part of it back), then ``mask_secrets``."""
    for secret in _hidden_passwords(dsn):
        text = text.replace(secret, "***")
    return mask_secrets(text)
