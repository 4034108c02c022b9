"""TF Serving's model directory layout: ``<models>/<name>/<version>/saved_model.pb``.

Versions are positive integers; TF Serving serves the highest by default.
"""

from __future__ import annotations

from pathlib import Path


class ModelNotFoundError(FileNotFoundError):
    """No model version where one was asked for."""


def versions(model_dir: str | Path) -> list[int]:
    """Version numbers under ``<models>/<name>/`` holding a ``saved_model.pb``, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) > 0 and (p / "saved_model.pb").is_file()
    )


def model_names(models_dir: str | Path) -> list[str]:
    """Names of the models under a models directory (those with at least one version)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and versions(p))


def next_version(model_dir: str | Path) -> int:
    """The version number a new export should take (1 for a new model)."""
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def resolve_version_dir(path: str | Path, name: str | None = None, version: int | None = None) -> Path:
    """Find a model version directory from any of the three levels of the layout.

    Parameters
    ----------
    path : str or Path
        ``<models>/<name>/<version>`` (used as is), ``<models>/<name>`` (its latest or
        the given version), or ``<models>`` (the model ``name``, or the only model).
    name : str, optional
        Model name, when ``path`` is a models directory holding several.
    version : int, optional
        Version; the latest when omitted.

    Returns
    -------
    Path
        The version directory (holds ``saved_model.pb``).

    Raises
    ------
    ModelNotFoundError
        With what was looked for and what exists.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    if versions(path):
        found = versions(path)
        chosen = version or found[-1]
        if chosen not in found:
            raise ModelNotFoundError(f"{path}: no version {chosen}; versions present: {found}")
        return path / str(chosen)
    names = model_names(path)
    if name:
        if name not in names:
            raise ModelNotFoundError(f"{path}: no model named '{name}'; models present: {names or 'none'}")
        return resolve_version_dir(path / name, version=version)
    if len(names) == 1:
        return resolve_version_dir(path / names[0], version=version)
    if not names:
        raise ModelNotFoundError(
            f"{path}: no SavedModel here; expected <models>/<name>/<version>/saved_model.pb"
        )
    raise ModelNotFoundError(f"{path}: several models ({', '.join(names)}); say which with a name")
