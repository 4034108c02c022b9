"""DCASE Task 2 datasets: file-name labels, attribute tables and clip listing.

DCASE file names carry the labels. Two schemes exist:

- 2021 and later: ``section_00_source_test_anomaly_0001_car_A1_spd_28V_mic_2.wav``
  (section, domain ``source``/``target``, split ``train``/``test``, label
  ``normal``/``anomaly``, index, then ``<attribute>_<value>`` pairs; 2024 uses
  ``noAttributes`` where a machine type has none). The evaluation set's unlabelled test
  files are ``section_00_0001.wav``.
- 2020: ``normal_id_00_00000000.wav`` (label, machine id, index). There is no domain:
  every clip is ``source``; the split comes from the folder (``train``/``test``).

The machine type is the name of the folder above the split folder
(``.../ToyCar/train/x.wav`` -> ``ToyCar``). Sources: DCASE 2020-2024 Task 2
descriptions (Koizumi et al. 2020, Kawaguchi et al. 2021, Dohi et al. 2022, 2023).

Clips with any other names (a user's own recordings, MIMII's ``00000000.wav``) take
their labels from the folders between the listed folder and the file
(:func:`folder_clip`, scheme ``"folders"``):

- label: a ``normal/`` folder, or ``anomaly/`` or ``abnormal/`` (as MIMII has it); a
  training clip outside them is normal;
- domain: a ``source/`` or ``target/`` folder, else ``source``;
- section: a ``section_XX/`` or ``id_XX/`` folder (MIMII's machine ids), else 0;
- attributes: any other folders, outermost first, under the key ``folder`` (e.g.
  ``train/target/car_A1/rec_1.wav`` -> ``{"folder": "car_A1"}``), which a recipe with
  ``labels: folders`` learns as classes.

Folders are searched recursively. Training clips are a ``train/`` folder's when there is
one, else every clip under the folder but a ``test/`` folder's (:func:`training_clips`);
test clips are a ``test/`` folder's, or the folder's own when it holds ``normal/`` and
``anomaly/`` (``abnormal/``) folders itself (:func:`list_clips`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac")
# folder names that label the clips below them (any depth), lower-cased
LABEL_FOLDERS = {"normal": "normal", "anomaly": "anomaly", "abnormal": "anomaly"}
DOMAIN_FOLDERS = ("source", "target")
_SECTION_FOLDER = re.compile(r"^(?:section|id)_(?P<section>\d+)$")

_DCASE2021 = re.compile(
    r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>.+))?$"
)
_DCASE2021_UNLABELLED = re.compile(r"^section_(?P<section>\d+)_(?P<index>\d+)$")
_DCASE2020 = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<section>\d+)_(?P<index>\d+)$")


class FileNameError(ValueError):
    """A file name follows neither DCASE naming scheme."""


@dataclass(frozen=True)
class ClipInfo:
    """Labels of one clip, read from its DCASE file name (and attribute table).

    Attributes
    ----------
    path : Path
        The clip's file.
    machine_type : str or None
        Folder name above the split folder, e.g. ``"ToyCar"``; None when unknown.
    section : int
        Section (2021+) or machine id (2020).
    domain : str
        ``"source"`` or ``"target"`` (2020 clips are all ``"source"``).
    split : str or None
        ``"train"`` or ``"test"``; None when neither name nor folder says.
    label : str or None
        ``"normal"`` or ``"anomaly"``; None for unlabelled evaluation clips.
    index : int
        The clip's number within its group.
    attributes : dict[str, str]
        Attribute name -> value, e.g. ``{"car": "A1", "spd": "28V", "mic": "2"}``.
    scheme : str
        ``"dcase2021+"`` or ``"dcase2020"``.
    """

    path: Path
    machine_type: str | None
    section: int
    domain: str
    split: str | None
    label: str | None
    index: int
    attributes: dict[str, str] = field(default_factory=dict)
    scheme: str = "dcase2021+"

    @property
    def is_anomaly(self) -> bool:
        """True for a clip labelled ``anomaly``; raises ValueError for unlabelled clips."""
        if self.label is None:
            raise ValueError(f"{self.path.name} carries no normal/anomaly label")
        return self.label == "anomaly"

    @property
    def attribute_string(self) -> str:
        """Attributes as in the file name, e.g. ``"car_A1_spd_28V_mic_2"``."""
        return "_".join(f"{k}_{v}" for k, v in self.attributes.items())


def parse_attribute_string(text: str | None) -> dict[str, str]:
    """Split ``"car_A1_spd_28V_mic_2"`` into ``{"car": "A1", "spd": "28V", "mic": "2"}``.

    ``None``, ``""`` and ``"noAttributes"`` (DCASE 2024) give ``{}``. A string with an
    odd number of ``_``-separated tokens cannot be split into pairs and is kept whole
    under the key ``"attributes"``.
    """
    if not text or text == "noAttributes":
        return {}
    tokens = text.split("_")
    if len(tokens) % 2:
        return {"attributes": text}
    return {tokens[i]: tokens[i + 1] for i in range(0, len(tokens), 2)}


def _folder_labels(path: Path) -> tuple[str | None, str | None]:
    """(split, machine type) from the folders: ``<machine_type>/<split>/<file>``."""
    split = path.parent.name if path.parent.name in ("train", "test") else None
    machine_type = path.parent.parent.name if split and path.parent.parent.name else None
    return split, machine_type


def parse_clip_name(path: str | Path) -> ClipInfo:
    """Read the labels a DCASE file name carries.

    Parameters
    ----------
    path : str or Path
        A clip's path; only the file name and its two parent folders are read.

    Returns
    -------
    ClipInfo

    Raises
    ------
    FileNameError
        If the name follows neither the 2021+ nor the 2020 scheme.

    Examples
    --------
    >>> info = parse_clip_name("ToyCar/test/section_00_target_test_anomaly_0001_car_A1_spd_28V_mic_2.wav")
    >>> info.machine_type, info.section, info.domain, info.label, info.attributes["car"]
    ('ToyCar', 0, 'target', 'anomaly', 'A1')
    >>> parse_clip_name("fan/train/normal_id_00_00000000.wav").scheme
    'dcase2020'
    """
    path = Path(path)
    stem = path.stem
    folder_split, machine_type = _folder_labels(path)
    if m := _DCASE2021.match(stem):
        return ClipInfo(
            path=path,
            machine_type=machine_type,
            section=int(m["section"]),
            domain=m["domain"],
            split=m["split"],
            label=m["label"],
            index=int(m["index"]),
            attributes=parse_attribute_string(m["attrs"]),
        )
    # Unlabelled 2021+ evaluation clips and 2020 clips: no domain in the name (all
    # "source"), split from the folder.
    for pattern, scheme in ((_DCASE2021_UNLABELLED, "dcase2021+"), (_DCASE2020, "dcase2020")):
        if m := pattern.match(stem):
            return ClipInfo(
                path=path,
                machine_type=machine_type,
                section=int(m["section"]),
                domain="source",
                split=folder_split,
                label=m.groupdict().get("label"),
                index=int(m["index"]),
                scheme=scheme,
            )
    raise FileNameError(
        f"{path.name}: not a DCASE clip name; expected "
        "'section_XX_<source|target>_<train|test>_<normal|anomaly>_<index>[_<attr>_<value>...]' "
        "or '<normal|anomaly>_id_XX_<index>'"
    )


def folder_clip(path: str | Path, root: str | Path, split: str | None, machine_type: str | None,
                index: int = 0) -> ClipInfo:
    """Labels of a clip not named the DCASE way, from the folders between ``root`` and it
    (module docstring): ``normal/``, ``anomaly/`` or ``abnormal/`` for the label (a
    training clip outside them is normal), ``source/`` or ``target/`` for the domain (else
    source), ``section_XX/`` or ``id_XX/`` for the section (else 0); the innermost wins.
    Any other folders, outermost first and joined by ``/``, are the attribute ``folder``.

    Examples
    --------
    >>> c = folder_clip("fan/id_02/abnormal/00000007.wav", "fan", "test", "fan")
    >>> c.label, c.domain, c.section, c.scheme
    ('anomaly', 'source', 2, 'folders')
    >>> folder_clip("press/target/rec_1.wav", "press", "train", "press").domain
    'target'
    >>> folder_clip("press/target/speed_28V/rec_1.wav", "press", "train", "press").attributes
    {'folder': 'speed_28V'}
    """
    path, root = Path(path), Path(root)
    parts = path.relative_to(root).parts[:-1]  # outermost first
    folders = [p.lower() for p in reversed(parts)]  # innermost first: the innermost wins
    label = next((LABEL_FOLDERS[f] for f in folders if f in LABEL_FOLDERS), "normal" if split == "train" else None)
    domain = next((f for f in folders if f in DOMAIN_FOLDERS), "source")
    section = next((int(m["section"]) for f in folders if (m := _SECTION_FOLDER.match(f))), 0)
    others = [p for p in parts
              if p.lower() not in LABEL_FOLDERS and p.lower() not in DOMAIN_FOLDERS and not _SECTION_FOLDER.match(p.lower())]
    attributes = {"folder": "/".join(others)} if others else {}
    return ClipInfo(path=path, machine_type=machine_type, section=section, domain=domain, split=split, label=label,
                    index=index, attributes=attributes, scheme="folders")


def has_label_folders(directory: str | Path) -> bool:
    """True when a folder holds ``normal/`` and ``anomaly/`` (or ``abnormal/``) folders at
    any depth (a labelled test set in MIMII's layout)."""
    names = {p.name.lower() for p in Path(directory).rglob("*") if p.is_dir()}
    return "normal" in names and bool(names & {"anomaly", "abnormal"})


def _audio_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """WAV/FLAC files under ``folder`` (recursively, sorted; hidden ones, such as macOS's
    ``._x.wav``, and those under ``exclude`` left out)."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if path.suffix.lower() not in AUDIO_SUFFIXES or any(p.startswith(".") for p in relative) or not path.is_file():
            continue
        if exclude is not None and path.is_relative_to(exclude):
            continue
        found.append(path)
    return found


def read_attributes_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """Read a DCASE ``attributes_XX.csv`` table (2022 and later).

    The table's columns are ``file_name, d1p, d1v, d2p, d2v, ...`` (attribute name and
    value pairs). Returns file base name -> ``{name: value}``; empty names are skipped.

    Raises
    ------
    ValueError
        If the file has no ``file_name`` column.
    """
    table: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'file_name' column; not a DCASE attribute table")
        names = [c for c in reader.fieldnames if c.endswith("p") and c[:-1] + "v" in reader.fieldnames]
        for row in reader:
            attrs = {row[n]: row[n[:-1] + "v"] for n in names if row.get(n)}
            table[Path(row["file_name"]).name] = attrs
    return table


def list_clips(directory: str | Path, split: str | None = None) -> list[ClipInfo]:
    """List the clips of one machine type, sorted by path.

    Parameters
    ----------
    directory : str or Path
        A machine-type folder holding ``train/`` and/or ``test/`` (e.g.
        ``dev_data/ToyCar``), or a split folder itself; for test clips also a folder
        holding ``normal/`` and ``anomaly/`` (``abnormal/``) folders itself (MIMII).
    split : str, optional
        ``"train"`` or ``"test"``: list only that split's folder.

    Returns
    -------
    list of ClipInfo
        Labels from DCASE file names, else from the folders (:func:`folder_clip`); where
        ``attributes_XX.csv`` files sit in the machine-type folder, their attributes
        replace those parsed from the names.

    Raises
    ------
    FileNotFoundError
        If the folder (or its split folder) does not exist or holds no WAV/FLAC clip.
    FileNameError
        If a test clip's name follows no DCASE scheme and no folder labels it.
    """
    directory = Path(directory)
    if directory.name in ("train", "test") and split in (None, directory.name):
        folders, machine_dir = [directory], directory.parent
    else:
        names = [split] if split else ["train", "test"]
        folders, machine_dir = [directory / n for n in names if (directory / n).is_dir()], directory
        if not folders and split in (None, "test") and directory.is_dir() and has_label_folders(directory):
            folders, machine_dir = [directory], directory  # normal/ + anomaly/ (abnormal/) test clips
    if not folders:
        raise FileNotFoundError(f"{directory}: no {split or 'train/ or test/'} folder of clips"
                                + (" (nor normal/ and anomaly/ folders)" if split in (None, "test") else ""))
    clips = []
    for folder in folders:
        folder_split = folder.name if folder.name in ("train", "test") else "test"
        clips += _clips_in(folder, folder_split, machine_dir)
    if not clips:
        raise FileNotFoundError(f"{directory}: no .wav or .flac clips in {', '.join(map(str, folders))}")
    return clips


def _clips_in(folder: Path, split: str, machine_dir: Path, exclude: Path | None = None) -> list[ClipInfo]:
    """The clips under ``folder``: DCASE names parsed, other names labelled by their folders."""
    attributes: dict[str, dict[str, str]] = {}
    for table in sorted(machine_dir.glob("attributes_*.csv")):
        attributes.update(read_attributes_csv(table))
    machine_type = machine_dir.name or None
    clips = []
    for index, path in enumerate(_audio_files(folder, exclude), 1):
        try:
            info = parse_clip_name(path)
            if info.machine_type is None:  # deeper than <machine_type>/<split>/
                info = ClipInfo(**{**info.__dict__, "machine_type": machine_type})
        except FileNameError as exc:
            info = folder_clip(path, folder, split, machine_type, index)
            if info.label is None:
                raise FileNameError(f"{exc}; or put the clip in a normal/ or anomaly/ (abnormal/) folder") from None
        if path.name in attributes:
            info = ClipInfo(**{**info.__dict__, "attributes": attributes[path.name]})
        clips.append(info)
    return clips


def training_clips(directory: str | Path) -> list[ClipInfo]:
    """The training clips of a folder: its ``train/`` folder's when it has one (DCASE),
    else every clip under it (recursively) but its ``test/`` folder's. Names are DCASE's
    or any (labelled by their folders: :func:`folder_clip`); anomalous clips included
    (the caller leaves them out).

    Raises
    ------
    FileNotFoundError
        No such folder, or no WAV/FLAC clip in it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such folder")
    if (directory / "train").is_dir():
        return list_clips(directory, split="train")
    if directory.name == "train":
        return list_clips(directory)
    clips = _clips_in(directory, "train", directory, exclude=directory / "test")
    if not clips:
        raise FileNotFoundError(f"{directory}: no .wav or .flac clips in it or its sub-folders")
    return clips
