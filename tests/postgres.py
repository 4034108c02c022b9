"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package (``.ci/run``
installs it), a cluster made with ``initdb`` in a temporary folder, started and stopped
with ``pg_ctl`` as the ``postgres`` user when the tests run as root (PostgreSQL refuses
root). Tests skip without it unless ``ASD_REQUIRE_POSTGRES=1`` (CI), where they fail.

The server class lives in :mod:`asd.measure.postgres_server` (``asd bench`` uses it too).
"""

from __future__ import annotations

from asd.measure.postgres_server import PostgresServer, postgres_bin

__all__ = ["PostgresServer", "postgres_bin"]
