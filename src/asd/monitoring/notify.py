"""Notifications of alert state changes through apprise URLs (``mailto://``,
``slack://``, ``msteams://``, ``json://`` for a generic webhook, ...): one message per
state change (raised, acknowledged, cleared), sent by the monitor.

Kept apart from the rule (:mod:`.alerts`) and the store: an event is written with the
state change, and :func:`send_pending` sends what has not gone out yet and records it, so
a notification that failed (a mail server down) is tried again on the next pass, and one
that went out is never sent twice.
"""

from __future__ import annotations

import sys

from .store import Store
from .tables import AlertEvent


def message(event: AlertEvent) -> tuple[str, str]:
    """``(title, body)`` of the notification for ``event`` (its alert and machine loaded)."""
    alert = event.alert
    machine = alert.machine.name
    title = f"asd: alert {alert.id} on {machine} {event.state}"
    lines = [f"Machine {machine}: alert {alert.id} {event.state} at {event.at:%Y-%m-%d %H:%M:%S} UTC.",
             f"Rule: {alert.rule}."]
    if event.by:
        lines.append(f"By {event.by}" + (f": {event.note}" if event.note else "."))
    return title, "\n".join(lines)


def send_pending(store: Store, urls: list[str], log=lambda m: print(m, file=sys.stderr)) -> int:
    """Send the notification of every event not yet notified to every URL in ``urls``;
    returns how many events went out. Without URLs, events are marked "no notify URL"
    (so that adding a URL later does not send old news). A failed send leaves the event
    pending and says so on stderr.

    Raises
    ------
    ValueError
        A URL apprise does not understand.
    """
    events = store.pending_events()
    if not events:
        return 0
    if not urls:
        for event in events:
            store.mark_notified(event.id, "no notify URL")
        return 0
    notifier = make_notifier(urls)
    sent = 0
    for event in events:
        title, body = message(event)
        if notifier.notify(title=title, body=body):
            store.mark_notified(event.id, f"sent to {len(urls)} URL(s)")
            sent += 1
        else:
            log(f"asd: notifying alert {event.alert.id} {event.state} failed; it is tried again on the next pass")
    return sent


def make_notifier(urls: list[str]):
    """An ``apprise.Apprise`` holding ``urls``.

    Raises
    ------
    ValueError
        A URL apprise does not understand (named in the message).
    """
    import apprise

    notifier = apprise.Apprise()
    for url in urls:
        if not notifier.add(url):
            raise ValueError(f"{url}: not a notification URL apprise understands (e.g. json://host/path, "
                             "mailto://user:pass@host, slack://...)")
    return notifier
