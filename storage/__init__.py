"""The durable work list: SQLAlchemy models, sessions, state transitions, the file spool."""
