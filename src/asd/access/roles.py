"""Roles, the actions they allow, and how a signed-in user gets one. Pure: no Streamlit.

Three roles, each allowing what the one before allows and more:

- **viewer**: upload and score clips, see results, machines and their history;
- **operator**: also acknowledge alerts and mark a machine's healthy baseline clips;
- **admin**: also publish model versions (Calibrate), change thresholds and alert rules.

A signed-in user's role comes from the access file (``ASD_ACCESS_FILE``, YAML), first
match wins: the e-mail allow-list (``users``), then the values of the ``claim`` (``groups``
by default, or ``roles``) mapped by ``groups``, the highest role among them; else
``default`` (none: refused)::

    claim: groups                 # the ID token / userinfo claim holding the user's groups
    groups:                       # claim value -> role
      asd-admins: admin
      asd-operators: operator
      asd-viewers: viewer
    users:                        # e-mail allow-list -> role
      alice@plant.example: admin
    default: null                 # a signed-in user matched by nothing: refused

Without an access file, the claim ``groups`` is read and its values ``admin``,
``operator`` and ``viewer`` are the roles themselves; nobody else gets a role.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

ROLES = ("viewer", "operator", "admin")
#: The least role each action needs
ACTIONS = {
    "score": "viewer",
    "view_machines": "viewer",
    "acknowledge": "operator",
    "mark_baseline": "operator",
    "publish": "admin",
    "change_rules": "admin",
    "change_threshold": "admin",
}


class AccessDenied(PermissionError):
    """The user's role does not allow the action (the message says which role would)."""


@dataclass(frozen=True)
class Identity:
    """Who is using the app.

    Attributes
    ----------
    name : str
        For records: the e-mail, else the name, else the subject of a signed-in user;
        ``"local user"`` on a laptop; ``"anonymous"`` otherwise.
    role : str or None
        One of :data:`ROLES`, or None (may do nothing).
    via : str
        ``"sign-in"``, ``"local"`` (no sign-in, bound to 127.0.0.1), ``"open"`` (no
        sign-in, reachable from other machines) or ``"anonymous"`` (sign-in required,
        not signed in).
    email : str or None
    """

    name: str
    role: str | None
    via: str
    email: str | None = None

    def record(self) -> dict:
        """What a record of an action keeps of the user."""
        return {"name": self.name, "email": self.email, "role": self.role, "via": self.via}


def may(identity: Identity, action: str) -> bool:
    """Whether ``identity``'s role allows ``action`` (a key of :data:`ACTIONS`).

    Raises
    ------
    KeyError
        Unknown action (a programming error, not a user's).
    """
    needed = ACTIONS[action]
    return identity.role is not None and ROLES.index(identity.role) >= ROLES.index(needed)


def require(identity: Identity, action: str) -> None:
    """Refuse ``action`` unless ``identity``'s role allows it.

    Raises
    ------
    AccessDenied
        With who, the action, the role it needs and how to get it.
    """
    if may(identity, action):
        return
    needed = ACTIONS[action]
    if identity.via == "open":
        raise AccessDenied(f"{action.replace('_', ' ')} is off: this app is reachable from other machines without "
                           "sign-in; turn sign-in on (README, \"Sign-in and roles\") to do it as a "
                           f"{needed}")
    raise AccessDenied(f"{identity.name} ({identity.role or 'no role'}) may not {action.replace('_', ' ')}: "
                       f"it needs the {needed} role")


class AccessPolicy(BaseModel):
    """The access file (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    claim: str = "groups"
    groups: dict[str, str] = {role: role for role in ROLES}
    users: dict[str, str] = {}
    default: str | None = None

    def model_post_init(self, _context) -> None:
        for where, role in [*(("groups", r) for r in self.groups.values()), *(("users", r) for r in self.users.values()),
                            ("default", self.default)]:
            if role is not None and role not in ROLES:
                raise ValueError(f"{where}: unknown role {role!r} (roles: {', '.join(ROLES)})")

    def role_of(self, claims: dict) -> str | None:
        """The role of a signed-in user with these ID-token claims (module docstring)."""
        email = str(claims.get("email") or "").lower()
        users = {k.lower(): v for k, v in self.users.items()}
        if email and email in users:
            return users[email]
        values = claims.get(self.claim) or []
        if isinstance(values, str):
            values = values.replace(",", " ").split()
        roles = [self.groups[str(v)] for v in values if str(v) in self.groups]
        if roles:
            return max(roles, key=ROLES.index)
        return self.default


def load_policy(path: str | Path | None = None) -> AccessPolicy:
    """The access file at ``path``, else ``$ASD_ACCESS_FILE``, else the defaults (a
    ``groups`` claim whose values are the role names; ``$ASD_ROLES_CLAIM`` names another
    claim, e.g. ``roles``).

    Raises
    ------
    FileNotFoundError
        The file named does not exist.
    ValueError
        Not YAML, or not an access file (the field and the reason).
    """
    path = path or os.environ.get("ASD_ACCESS_FILE")
    if not path:
        return AccessPolicy(claim=os.environ.get("ASD_ROLES_CLAIM") or "groups")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such access file (ASD_ACCESS_FILE)")
    try:
        return AccessPolicy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{path}: {'.'.join(map(str, first['loc'])) or 'the file'}: {first['msg']}") from None
