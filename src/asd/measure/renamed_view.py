"""A DCASE training set as a user's folder would hold it, for ``asd benchmark``'s
attribute-free rows (issue 30): the same clips, named ``rec_0001.flac`` ... in their
DCASE order, with no attributes table, in ``source/`` and ``target/`` folders (or none),
and optionally in sub-folders named after attributes (``car_A1/``).

The copy is made of symbolic links in a folder of the caller's and read back with
:func:`asd.data.training_clips`, the reader of ``asd train --data``, so a row trains on
exactly what that reader makes of a user's folder.
"""

from __future__ import annotations

from pathlib import Path

from ..data import training_clips
from ..detectors.base import ClipSet


def renamed_training_set(train: ClipSet, folder: str | Path, keep_domains: bool = True,
                         attribute_folders: tuple[str, ...] = ()) -> ClipSet:
    """``train`` re-read from a renamed copy under ``folder``.

    Parameters
    ----------
    train : ClipSet
        DCASE-named training clips with their log-mel spectrograms.
    folder : path
        An empty or new folder; the links are written here.
    keep_domains : bool
        Put each clip in a ``source/`` or ``target/`` folder (else all in one: every clip
        is then ``source``).
    attribute_folders : tuple of str
        Attribute names (e.g. ``("car",)``) whose values become nested sub-folders
        (``car_A1/``); the clip's other attributes are dropped.

    Returns
    -------
    ClipSet
        The same clips (their log-mel spectrograms reused, not recomputed) as
        ``asd.data.training_clips`` labels them: scheme ``folders``, no attributes but the
        sub-folders'.

    Raises
    ------
    KeyError
        A clip lacks one of ``attribute_folders``.
    """
    folder = Path(folder)
    logmel_of = {}
    for number, (clip, logmel) in enumerate(zip(train.clips, train.logmels), 1):
        parts = ([clip.domain or "source"] if keep_domains else []) + [f"{a}_{clip.attributes[a]}" for a in attribute_folders]
        link = folder.joinpath(*parts, f"rec_{number:04d}{clip.path.suffix.lower()}")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(clip.path.resolve())
        logmel_of[link] = logmel
    clips = training_clips(folder)
    return ClipSet(clips, [logmel_of[c.path] for c in clips], train.features)
