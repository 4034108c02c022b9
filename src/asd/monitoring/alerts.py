"""The alert rule, as pure functions over a machine's verdicts (no SQL, no I/O but the
rules file).

One clip's verdict is noisy; a maintenance team acts on a rule over the last few: an
alert is **raised** when at least k of the last n verdicts are anomalous (default 3 of
5), stays open (raised, then perhaps **acknowledged** by a person) and is **cleared**
after m normal verdicts in a row (default 5). ``unfamiliar`` verdicts count as neither
anomalous nor normal: they do not raise an alert, and they break a normal run.

A machine with a baseline (:mod:`.baselines`) gets window verdicts (the mean of its last
few clip scores against its own threshold): there the rule is ``windows:``, by default 1
of 1 (an anomalous window raises; the k-of-n rule stays as an option) and 5 normal
windows in a row clear.

The rule per machine comes from, first to last: what was set in the app (the machine's
row in the store), the rules file's ``machines:`` entry, its ``default:`` (clip verdicts)
or ``windows:`` (window verdicts), and 3 of 5 / 5 (1 of 1 / 5 for windows). The rules file
(``asd monitor --rules FILE``)::

    default: {k: 3, n: 5, m: 5}
    windows: {k: 1, n: 1, m: 5}
    machines:
      press-07: {k: 2, n: 3}
    notify:                      # apprise URLs, one notification per state change
      - json://alerts.example.com/asd
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .tables import ACKNOWLEDGED, CLEARED, OPEN_STATES, RAISED

ANOMALOUS, NORMAL = "anomalous", "normal"


class AlertRule(BaseModel):
    """Raise when ``k`` of the last ``n`` verdicts are anomalous; clear after ``m``
    normal verdicts in a row.

    Raises
    ------
    pydantic.ValidationError
        k or n below 1, k above n, m below 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(default=3, ge=1, description="anomalous verdicts that raise an alert ...")
    n: int = Field(default=5, ge=1, description="... among the last n")
    m: int = Field(default=5, ge=1, description="normal verdicts in a row that clear it")

    @model_validator(mode="after")
    def _k_at_most_n(self):
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) cannot exceed n ({self.n}): k of the last n verdicts")
        return self

    def describe(self) -> str:
        """The rule in words, as alerts record it."""
        return f"{self.k} of the last {self.n} verdicts anomalous; cleared after {self.m} normal in a row"


def should_raise(verdicts: Sequence[str], rule: AlertRule) -> bool:
    """True when at least ``rule.k`` of the last ``rule.n`` of ``verdicts`` (oldest first)
    are anomalous."""
    return sum(v == ANOMALOUS for v in list(verdicts)[-rule.n :]) >= rule.k


def should_clear(verdicts: Sequence[str], rule: AlertRule) -> bool:
    """True when the last ``rule.m`` of ``verdicts`` (oldest first) are all normal."""
    last = list(verdicts)[-rule.m :]
    return len(last) == rule.m and all(v == NORMAL for v in last)


def next_state(state: str | None, verdicts: Sequence[str], rule: AlertRule) -> str | None:
    """The alert state after the newest verdict: ``state`` is the machine's open alert's
    (``"raised"`` or ``"acknowledged"``) or None without one. Returns ``"raised"`` for a
    new alert, ``"cleared"`` when the open one clears, else ``state`` unchanged."""
    if state in OPEN_STATES:
        return CLEARED if should_clear(verdicts, rule) else state
    return RAISED if should_raise(verdicts, rule) else None


class RuleBook(BaseModel):
    """A rules file: the rule on clip verdicts (``default``), the rule on window verdicts
    (``windows``: a machine with a baseline; by default an anomalous window raises, as a
    window already averages several clips), rules per machine, notification URLs."""

    model_config = ConfigDict(extra="forbid")
    default: AlertRule = AlertRule()
    windows: AlertRule = AlertRule(k=1, n=1, m=5)
    machines: dict[str, AlertRule] = {}
    notify: list[str] = []

    def rule_for(self, machine: str, override: dict | None = None, windows: bool = False) -> AlertRule:
        """The rule for ``machine``: the file's (machine entry, else ``windows`` for window
        verdicts or ``default`` for clip verdicts), with the fields set in ``override``
        (the app's, from the store; None values ignored) on top."""
        rule = self.machines.get(machine, self.windows if windows else self.default)
        changes = {key: value for key, value in (override or {}).items() if value is not None}
        return AlertRule(**{**rule.model_dump(), **changes}) if changes else rule


def load_rules(path: str | Path | None) -> RuleBook:
    """Read a rules file (YAML, see the module docstring); None gives the defaults.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not YAML, or not a rules file (the field and the reason, in one line).
    """
    if path is None:
        return RuleBook()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such rules file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return RuleBook.model_validate(data)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


__all__ = ["AlertRule", "RuleBook", "load_rules", "next_state", "should_clear", "should_raise",
           "RAISED", "ACKNOWLEDGED", "CLEARED"]
