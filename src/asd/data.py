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
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac")

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
    """List the DCASE clips of one machine type, sorted by file name.

    Parameters
    ----------
    directory : str or Path
        A machine-type folder holding ``train/`` and/or ``test/`` (e.g.
        ``dev_data/ToyCar``), or a split folder itself.
    split : str, optional
        ``"train"`` or ``"test"``: list only that split's folder.

    Returns
    -------
    list of ClipInfo
        Labels from the file names; where ``attributes_XX.csv`` files sit in the
        machine-type folder, their attributes replace those parsed from the names.

    Raises
    ------
    FileNotFoundError
        If the folder (or its split folder) does not exist or holds no WAV/FLAC clip.
    FileNameError
        If a clip's name follows no DCASE scheme.
    """
    directory = Path(directory)
    if directory.name in ("train", "test") and split in (None, directory.name):
        folders, machine_dir = [directory], directory.parent
    else:
        names = [split] if split else ["train", "test"]
        folders, machine_dir = [directory / n for n in names if (directory / n).is_dir()], directory
    if not folders:
        raise FileNotFoundError(f"{directory}: no {split or 'train/ or test/'} folder of clips")
    attributes: dict[str, dict[str, str]] = {}
    for table in sorted(machine_dir.glob("attributes_*.csv")):
        attributes.update(read_attributes_csv(table))
    clips = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            info = parse_clip_name(path)
            if path.name in attributes:
                info = ClipInfo(**{**info.__dict__, "attributes": attributes[path.name]})
            clips.append(info)
    if not clips:
        raise FileNotFoundError(f"{directory}: no .wav or .flac clips in {', '.join(map(str, folders))}")
    return clips
