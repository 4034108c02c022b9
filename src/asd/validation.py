"""Settings errors in words: shared by the training config (:mod:`asd.config`) and the
detectors' own settings (:mod:`asd.detectors.base`), which the config validates."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: ``"key.sub: message; ..."``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
