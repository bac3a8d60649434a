"""Console accounts and server-side console sessions (SQL only; hashing and policy live in
dicom_node.users). A session is found by the SHA-256 of its cookie value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.models import ConsoleSession, UserAccount


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    role: str
    password_hash: str
    created_at: datetime
    password_changed_at: datetime


@dataclass(frozen=True)
class SessionRow:
    user: Account
    csrf_token: str
    expires_at: datetime


def get_user(session: Session, username: str) -> Account | None:
    row = session.scalars(select(UserAccount).where(UserAccount.username == username)).first()
    return None if row is None else _account(row)


def list_users(session: Session) -> list[Account]:
    return [_account(r) for r in session.scalars(select(UserAccount).order_by(UserAccount.username))]


def user_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(UserAccount)) or 0)


def admin_count(session: Session) -> int:
    return int(session.scalar(
        select(func.count()).select_from(UserAccount).where(UserAccount.role == "admin")) or 0)


def add_user(session: Session, username: str, password_hash: str, role: str,
             now: datetime) -> None:
    session.add(UserAccount(username=username, password_hash=password_hash, role=role,
                            created_at=now, password_changed_at=now))
    session.flush()


def update_user(session: Session, username: str, now: datetime, *,
                password_hash: str | None = None, role: str | None = None) -> bool:
    """Change the hash and/or role; True when the user exists."""
    row = session.scalars(select(UserAccount).where(UserAccount.username == username)).first()
    if row is None:
        return False
    if password_hash is not None:
        row.password_hash = password_hash
        row.password_changed_at = now
    if role is not None:
        row.role = role
    return True


def remove_user(session: Session, username: str) -> bool:
    row = session.scalars(select(UserAccount).where(UserAccount.username == username)).first()
    if row is None:
        return False
    end_sessions(session, row.id)
    session.delete(row)
    return True


def add_session(session: Session, token_sha256: str, user_id: int, csrf_token: str,
                now: datetime, expires_at: datetime) -> None:
    session.add(ConsoleSession(token_sha256=token_sha256, user_id=user_id,
                               csrf_token=csrf_token, created_at=now, expires_at=expires_at))


def find_session(session: Session, token_sha256: str, now: datetime) -> SessionRow | None:
    """The unexpired session with this token hash and its user (None if none)."""
    found = session.execute(
        select(ConsoleSession, UserAccount)
        .join(UserAccount, UserAccount.id == ConsoleSession.user_id)
        .where(ConsoleSession.token_sha256 == token_sha256, ConsoleSession.expires_at > now)
    ).first()
    if found is None:
        return None
    row, user = found
    return SessionRow(_account(user), row.csrf_token, row.expires_at)


def end_session(session: Session, token_sha256: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.token_sha256 == token_sha256))


def end_sessions(session: Session, user_id: int) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))


def end_expired(session: Session, now: datetime) -> int:
    return session.execute(
        delete(ConsoleSession).where(ConsoleSession.expires_at <= now)).rowcount or 0


def _account(row: UserAccount) -> Account:
    return Account(row.id, row.username, row.role, row.password_hash, row.created_at,
                   row.password_changed_at)


def set_notice(session: Session, token_sha256: str, notice: str | None) -> None:
    row = session.get(ConsoleSession, token_sha256)
    if row is not None:
        row.notice = notice


def pop_notice(session: Session, token_sha256: str) -> str | None:
    row = session.get(ConsoleSession, token_sha256)
    if row is None or row.notice is None:
        return None
    notice, row.notice = row.notice, None
    return notice
