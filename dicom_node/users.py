"""Console accounts, sign-in and console sessions: the service shared by `dicom-node users`
and the console's login. Passwords are hashed with argon2id (pwdlib's recommended hasher, its
default parameters: 64 MiB, 3 passes, ~0.25 s a hash on the development machine); only the hash
is stored. Every account change is audited (dicom_node.audit) in its own transaction.

Roles: "viewer" reads every page; "admin" also changes things (retry, reprocess, resend,
retry dead deliveries, thresholds). The first admin is made on the node's host with
`dicom-node users add NAME --role admin` (the console has no account until then and says so).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pwdlib import PasswordHash
from sqlalchemy.exc import IntegrityError

from dicom_node import audit
from dicom_node.audit import Actor
from storage import accounts
from storage.db import Database

ROLES = ("viewer", "admin")
MIN_PASSWORD_LENGTH = 10  # NIST SP 800-63B asks at least 8 for user-chosen passwords
MAX_PASSWORD_LENGTH = 1024
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HASHER = PasswordHash.recommended()
# verified when the user name is unknown, so that a wrong name costs as long as a wrong password
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class UserError(ValueError):
    """A refused account change (bad name, role or password; unknown or duplicate user; the
    last admin); the message says which."""


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: str
    created_at: datetime
    password_changed_at: datetime


@dataclass(frozen=True)
class SignedIn:
    """The user behind a console session, read from the database at each request (so a role
    change or a removal takes effect at once)."""

    username: str
    role: str
    csrf_token: str
    token_sha256: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def check_username(username: str) -> str:
    if not _USERNAME.fullmatch(username or ""):
        raise UserError(f"user name {username!r} must be 1..64 letters, digits, '.', '_', '@' "
                        "or '-', starting with a letter or digit")
    return username


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise UserError(f"a password needs {MIN_PASSWORD_LENGTH}..{MAX_PASSWORD_LENGTH} "
                        f"characters (got {len(password)})")
    return password


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def add_user(database: Database, username: str, password: str, role: str, actor: Actor,
             now: datetime) -> UserInfo:
    """Create an account. Raises UserError (bad name, password or role; name taken)."""
    check_username(username)
    check_password(password)
    _check_role(role)
    hashed = _HASHER.hash(password)
    try:
        with database.sessions.begin() as session:
            if accounts.get_user(session, username) is not None:
                raise UserError(f"user {username!r} exists already (use `users passwd`)")
            accounts.add_user(session, username, hashed, role, now)
            audit.record(session, actor, "user.add", username, after={"role": role}, now=now)
    except IntegrityError:
        raise UserError(f"user {username!r} exists already (use `users passwd`)") from None
    return UserInfo(username, role, now, now)


def set_password(database: Database, username: str, password: str, actor: Actor,
                 now: datetime) -> None:
    """Replace a password; the user's console sessions end. Raises UserError."""
    check_password(password)
    hashed = _HASHER.hash(password)
    with database.sessions.begin() as session:
        user = accounts.get_user(session, username)
        if user is None:
            raise UserError(f"no user {username!r}")
        accounts.update_user(session, username, now, password_hash=hashed)
        accounts.end_sessions(session, user.id)
        audit.record(session, actor, "user.passwd", username, now=now)


def remove_user(database: Database, username: str, actor: Actor, now: datetime) -> None:
    """Delete an account and its sessions. The last admin is refused: without one nobody
    could change anything from the console. Raises UserError."""
    with database.sessions.begin() as session:
        user = accounts.get_user(session, username)
        if user is None:
            raise UserError(f"no user {username!r}")
        if user.role == "admin" and accounts.admin_count(session) == 1:
            raise UserError(f"{username!r} is the last admin; add another admin first")
        accounts.remove_user(session, username)
        audit.record(session, actor, "user.remove", username, before={"role": user.role},
                     now=now)


def list_users(database: Database) -> list[UserInfo]:
    with database.read_only() as session:
        return [UserInfo(u.username, u.role, u.created_at, u.password_changed_at)
                for u in accounts.list_users(session)]


def has_users(database: Database) -> bool:
    with database.read_only() as session:
        return accounts.user_count(session) > 0


def authenticate(database: Database, username: str, password: str) -> UserInfo | None:
    """The account when the password matches, else None (the same time either way)."""
    with database.read_only() as session:
        user = accounts.get_user(session, username)
    if user is None:
        _HASHER.verify(password, _DUMMY_HASH)
        return None
    if not _HASHER.verify(password, user.password_hash):
        return None
    return UserInfo(user.username, user.role, user.created_at, user.password_changed_at)


def start_session(database: Database, username: str, now: datetime,
                  lifetime: timedelta) -> str:
    """A new console session for `username`; returns the cookie value (random, 256 bits).
    Only its SHA-256 is stored. Expired sessions are deleted on the way."""
    token = secrets.token_urlsafe(32)
    with database.sessions.begin() as session:
        user = accounts.get_user(session, username)
        if user is None:
            raise UserError(f"no user {username!r}")
        accounts.end_expired(session, now)
        accounts.add_session(session, _sha256(token), user.id, secrets.token_urlsafe(32), now,
                             now + lifetime)
    return token


def session_user(database: Database, token: str | None, now: datetime) -> SignedIn | None:
    """Who holds the session `token` (the cookie value), or None if none or expired."""
    if not token:
        return None
    digest = _sha256(token)
    with database.read_only() as session:
        found = accounts.find_session(session, digest, now)
    if found is None:
        return None
    return SignedIn(found.user.username, found.user.role, found.csrf_token, digest)


def end_session(database: Database, token_sha256: str) -> None:
    with database.sessions.begin() as session:
        accounts.end_session(session, token_sha256)


def set_notice(database: Database, who: SignedIn, notice: str) -> None:
    """A one-line outcome to show on the next page the user sees (post/redirect/get)."""
    with database.sessions.begin() as session:
        accounts.set_notice(session, who.token_sha256, notice[:2000])


def pop_notice(database: Database, who: SignedIn) -> str | None:
    with database.sessions.begin() as session:
        return accounts.pop_notice(session, who.token_sha256)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginThrottle:
    """Login rate limiting: after `max_failures` failed sign-ins within `window_seconds` for one
    user name, or 4x that many from one client address, further attempts are refused until
    the oldest failure leaves the window. In memory (one `serve` process holds the console);
    `clock` returns monotonic seconds."""

    def __init__(self, max_failures: int = 5, window_seconds: float = 300,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.max_failures = max_failures
        self.window = window_seconds
        self.clock = clock or time.monotonic
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, username: str, client: str) -> float:
        """0 when an attempt may go ahead, else how long until one may."""
        now = self.clock()
        with self._lock:
            waits = [self._wait(f"user:{username.lower()}", self.max_failures, now),
                     self._wait(f"addr:{client}", self.max_failures * 4, now)]
        return max(waits)

    def failed(self, username: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (f"user:{username.lower()}", f"addr:{client}"):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{username.lower()}", None)

    def _wait(self, key: str, limit: int, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) < limit:
            return 0.0
        return self.window - (now - times[-limit])
