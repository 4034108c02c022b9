"""Where a clip comes from: its machine, when it was recorded, and its copy in the clip store.

- Machine id: the first folder under a watched folder (``incoming/press-07/a.wav`` under
  ``incoming`` is ``press-07``), or the one ``--machine`` names for a flat folder.
- Recorded-at: a timestamp in the file name when it has one (``2026-11-03T10-00-00``,
  ``20261103_100000``, ``2026-11-03 10:00:00+01:00``; without an offset it is UTC), else
  the file's modification time.
- The clip store keeps copies of the clips behind an alert and of baseline clips, so that
  cleaning the incoming folder loses nothing that raised an alarm or that a new model
  version must embed again.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..data import AUDIO_SUFFIXES

# date, a separator, time (with optional separators), optional fraction, optional zone
_TIMESTAMP = re.compile(
    r"(?<!\d)(?P<y>\d{4})-?(?P<mo>\d{2})-?(?P<d>\d{2})[T_ \-]?(?P<h>\d{2})[-:]?(?P<mi>\d{2})[-:]?(?P<s>\d{2})"
    r"(?:[.,]\d+)?(?P<tz>Z|[+-]\d{2}:?\d{2})?(?!\d)"
)


def timestamp_in_name(name: str) -> datetime | None:
    """The date and time a file name carries (see the module docstring), as an aware UTC
    datetime; None when it carries none (or an impossible one, such as month 13)."""
    match = _TIMESTAMP.search(name)
    if not match:
        return None
    g = match.groupdict()
    try:
        when = datetime(int(g["y"]), int(g["mo"]), int(g["d"]), int(g["h"]), int(g["mi"]), int(g["s"]))
    except ValueError:
        return None
    zone = timezone.utc
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        digits = g["tz"][1:].replace(":", "")
        zone = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    return when.replace(tzinfo=zone).astimezone(timezone.utc)


def recorded_at(path: Path) -> datetime:
    """When ``path`` was recorded: its name's timestamp, else its modification time (UTC).

    Raises
    ------
    OSError
        The file cannot be stat'ed (gone).
    """
    return timestamp_in_name(path.stem) or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)


def machine_of(path: Path, folder: Path, machine: str | None = None) -> str | None:
    """The machine id of ``path`` found under ``folder``: ``machine`` when given, else the
    first folder between them; None for a file directly in ``folder`` (no machine)."""
    if machine:
        return machine
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else None


def audio_files(folder: Path) -> list[Path]:
    """The ``.wav`` and ``.flac`` files under ``folder`` (any case, recursively, hidden
    files and folders skipped: recorders and copy tools write there first), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_SUFFIXES]
    return sorted(found)


def baseline_keeper(store: Path, machine: str):
    """``keep(clip) -> path or None``: copies a clip marked healthy into
    ``store/<machine>/baseline/`` (:func:`keep_in_store`) and returns the copy's path, or
    None when the incoming file is gone (its embedding is kept all the same)."""
    def keep(clip) -> str | None:
        try:
            return str(keep_in_store(Path(clip.path), store, machine, "baseline", clip.id))
        except OSError:
            return None

    return keep


def keep_in_store(path: Path, store: Path, machine: str, folder: str, clip_id: int) -> Path:
    """Copy ``path`` to ``store/<machine>/<folder>/<clip id>-<name>`` (times kept; folder
    ``alert-<id>`` or ``baseline``) and return the copy's path; copying again overwrites
    the same copy.

    Raises
    ------
    OSError
        The clip is gone or the store is not writable.
    """
    target = store / machine / folder / f"{clip_id}-{path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name("." + target.name + ".partial")  # never a half copy under the final name
    shutil.copy2(path, partial)
    os.replace(partial, target)
    return target
