"""The writing operations the app offers, each refused unless the user's role allows it
(:func:`asd.access.require`, checked here, in the code path that writes, not only by
hiding a button) and recorded with who did it."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .roles import Identity, require


def publish_version(identity: Identity, models_dir: str | Path, name: str, clips: list[Path], domain: str,
                    base_version: int, force: bool = False, db_url: str | None = None) -> Path:
    """Publish a new model version with ``clips`` enrolled (:func:`asd.enrolment.enroll`);
    the version's metadata records who published it, and so does the monitoring
    database's audit log when ``db_url`` reaches one (a database that is down does not
    stop publishing: said on stderr).

    Raises
    ------
    asd.access.AccessDenied
        The user is not an admin.
    asd.enrolment.EnrolmentError
        As :func:`asd.enrolment.enroll`.
    """
    require(identity, "publish")
    from ..enrolment import enroll

    by = {**identity.record(), "at": datetime.now(timezone.utc).isoformat()}
    version_dir = enroll(models_dir, name, clips, domain, base_version=base_version, force=force,
                         published_by=by, log=lambda *_: None)
    if db_url:
        from ..monitoring.store import StoreError, open_store

        try:
            store = open_store(db_url)
            try:
                store.record(identity.name, "publish model version", f"{name} v{version_dir.name}",
                             base_version=base_version, domain=domain, clips=[Path(c).name for c in clips])
            finally:
                store.close()
        except StoreError as exc:
            print(f"asd: published {name} v{version_dir.name}; not recorded in the monitoring database: {exc}",
                  file=sys.stderr)
    return version_dir


def acknowledge_alert(identity: Identity, store, alert_id: int, note: str | None, name: str | None = None):
    """Acknowledge an alert as ``identity`` (``name``, typed on a laptop without sign-in,
    stands for the local user). Raises :class:`asd.access.AccessDenied` below operator."""
    require(identity, "acknowledge")
    return store.acknowledge(alert_id, _who(identity, name), note)


def mark_baseline(identity: Identity, store, machine: str, clip_ids: list[int], keep: Callable | None = None,
                  name: str | None = None) -> tuple[int, int]:
    """Mark clips healthy baseline as ``identity``. Raises :class:`asd.access.AccessDenied`
    below operator."""
    require(identity, "mark_baseline")
    return store.mark_baseline(machine, _who(identity, name), keep, ids=clip_ids, expect=len(clip_ids))


def set_rule(identity: Identity, store, machine: str, k: int, n: int, m: int, name: str | None = None) -> None:
    """Change a machine's alert rule as ``identity``. Raises :class:`asd.access.AccessDenied`
    below admin."""
    require(identity, "change_rules")
    store.set_rule(machine, k, n, m, by=_who(identity, name))


def _who(identity: Identity, name: str | None) -> str:
    """The name records keep: the signed-in user's; on a laptop, the name typed, if any."""
    if identity.via == "sign-in" or not (name or "").strip():
        return identity.name
    return name.strip()
