"""No sign-in secret is committed (issue 31): every file git tracks is searched for a
``cookie_secret`` or ``client_secret`` set to a value that is not an obvious placeholder.

A value counts when it is a quoted string (TOML, YAML, JSON, Python, shell, docs), or a
bare word in a configuration file (``client_secret: s3cr3t`` in YAML, ``=`` in .env/.ini).
Placeholders: empty, ``CHANGE-ME`` (any case, ``-``/``_``/nothing between), ``<...>``,
``${...}``/``$(...)``/``$VAR`` (filled in where it is deployed), and runs of ``x``,
``*`` or ``.``. Anything else is a secret, and the test names the file and line.

Exempt: Python files under tests/. The sign-in tests (tests/test_signin.py) start a local
mock identity provider that accepts any client secret and write throwaway values into
temporary secrets files, and this file plants secrets to show that they are caught. A
value in any other file under tests/ (a committed .toml fixture, say) is still caught.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]

KEYS = ("cookie_secret", "client_secret")
# key (optionally quoted), then = or :, then the value
ASSIGNMENT = re.compile(r"""(?<![A-Za-z0-9])(?P<key>cookie_secret|client_secret)["']?\s*[:=]\s*(?P<rest>.*)""",
                        re.IGNORECASE)
QUOTED = re.compile(r"""^(?:[rbfu]{0,2})(?P<q>"{3}|'{3}|"|')(?P<value>.*?)(?P=q)""", re.IGNORECASE)
BARE = re.compile(r"""^(?P<value>\$\{[^}]*\}|\$\([^)]*\)|[^\s#;,}\]]+)""")
PLACEHOLDER = re.compile(r"""^(?:
      |change[-_]?me
      |<[^<>]*>
      |\$\{[^}]*\}|\$\([^)]*\)|\$[A-Za-z_][A-Za-z0-9_]*
      |x+|\*+|\.+
    )$""", re.IGNORECASE | re.VERBOSE)
# files in which a bare word after the key is a value (elsewhere it is code: a variable)
CONFIG_SUFFIXES = {".toml", ".yaml", ".yml", ".env", ".ini", ".cfg", ".conf", ".properties", ".json", ""}
EXEMPT = ("tests/", ".py")  # Python files under tests/ (module docstring)


def exempt(path: str) -> bool:
    return path.startswith(EXEMPT[0]) and path.endswith(EXEMPT[1])


def is_placeholder(value: str) -> bool:
    value = value.strip()
    return bool(PLACEHOLDER.match(value)) or "change-me" in value.lower() or "change_me" in value.lower()


def assignments(path: str, text: str):
    """``(line number, key, value)`` of each secret setting in a file's text."""
    config = PurePosixPath(path).suffix.lower() in CONFIG_SUFFIXES or PurePosixPath(path).name.startswith(".env")
    for number, line in enumerate(text.splitlines(), 1):
        for match in ASSIGNMENT.finditer(line):
            rest = match["rest"].strip()
            quoted = QUOTED.match(rest)
            if quoted:
                yield number, match["key"], quoted["value"]
            elif config and (bare := BARE.match(rest)) and bare["value"] not in ("|", ">", "null", "~"):
                yield number, match["key"], bare["value"]


def committed_secrets(repo: Path) -> list[str]:
    """``path:line: key`` of every secret in the files git tracks in ``repo`` (their
    working-tree content), except in the exempt files."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    found = []
    for path in filter(None, listed.decode().split("\0")):
        file = repo / path
        if exempt(path) or not file.is_file() or file.is_symlink():
            continue
        data = file.read_bytes()
        if b"\0" in data[:8192] or not any(key.encode() in data.lower() for key in KEYS):
            continue  # binary, or nothing to look at
        text = data.decode("utf-8", errors="replace")
        found += [f"{path}:{number}: {key}" for number, key, value in assignments(path, text)
                  if not is_placeholder(value)]
    return found


def test_no_sign_in_secret_is_committed():
    found = committed_secrets(REPO)
    assert not found, ("secrets in files tracked by git (use a placeholder such as \"CHANGE-ME\", and keep the real "
                       "file in a git-ignored place: secrets/, deploy/kubernetes/overlays/signin/auth.toml):\n"
                       + "\n".join(found))


def test_the_examples_are_scanned_and_hold_placeholders():
    example = (REPO / "deploy" / "examples" / "asd_auth.example.toml").read_text()
    values = {key: value for _, key, value in assignments("deploy/examples/asd_auth.example.toml", example)}
    assert set(values) == set(KEYS) and all(is_placeholder(v) for v in values.values()), values


@pytest.mark.parametrize("value", ["", "CHANGE-ME", "change_me", "changeme", "<from the identity provider>",
                                   "${ASD_CLIENT_SECRET}", "$(openssl rand -hex 32)", "$COOKIE_SECRET", "xxxx", "***",
                                   "..."])
def test_placeholders_pass(value):
    assert is_placeholder(value)


@pytest.mark.parametrize("value", ["3f9a1c0e7d2b4a6f8e1d0c9b7a5f3e2d", "s3cr3t", "CHANGEDME-not", "xyz", "<half"])
def test_real_looking_values_do_not(value):
    assert not is_placeholder(value)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_a_planted_secret_is_caught_and_named(tmp_path):
    """A throwaway git repository: secrets in the shapes they would be committed in, in
    tracked files, are found and named by file and line; placeholders, untracked files,
    code reading a secret and the exempt test files are not."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    planted = {
        "deploy/kubernetes/overlays/signin/auth.toml":  # the user's file, force-added
            '[auth]\nredirect_uri = "https://asd.plant.example/oauth2callback"\n'
            'cookie_secret = "9c1f0e3a7b2d4c6e8f0a1b3c5d7e9f11"\nclient_secret = "CHANGE-ME"\n',
        "secrets/asd_auth.toml": "[auth]\nclient_secret='Zm9vYmFyYmF6cXV4'\n",
        "deploy/values.yaml": "auth:\n  client_secret: s3cr3t-from-keycloak\n  cookie_secret: ${COOKIE}\n",
        ".env": "COOKIE=1\nclient_secret=abc123def456\nOIDC_CLIENT_SECRET='e5a0c2d4'\n",
        "docs/security.md": 'Set it:\n\n```toml\n[auth]\nclient_secret = "copied-from-entra"\n```\n',
        "src/app.py": 'AUTH = {"cookie_secret": "hard-coded-in-code"}\n',
        "tests/data/auth.toml": 'cookie_secret = "a committed fixture"\n',
    }
    harmless = {
        "deploy/examples/auth.example.toml": 'cookie_secret = "CHANGE-ME"\nclient_secret = "<from the provider>"\n',
        "docs/guide.md": "`cookie_secret` and `client_secret` are never committed; "
                         "client_secret: your provider shows it once.\n",
        "src/reader.py": 'cookie_secret = st.secrets["auth"]["cookie_secret"]\nclient_secret=client_secret\n',
        "tests/test_provider.py": 'SECRETS = \'client_secret = "any-secret-the-mock-accepts"\'\n',
        "blob.bin": "\0" + 'client_secret = "binary files are skipped"',
    }
    for path, text in {**planted, **harmless}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    (repo / "untracked.toml").write_text('client_secret = "not tracked, not committed"\n')
    _git(repo, "add", "-f", *planted, *harmless)

    found = committed_secrets(repo)
    assert sorted(found) == sorted([
        "deploy/kubernetes/overlays/signin/auth.toml:3: cookie_secret",
        "secrets/asd_auth.toml:2: client_secret",
        "deploy/values.yaml:2: client_secret",
        ".env:2: client_secret",
        ".env:3: CLIENT_SECRET",
        "docs/security.md:5: client_secret",
        "src/app.py:1: cookie_secret",
        "tests/data/auth.toml:1: cookie_secret",
    ])
    # and the test over the repository would fail on it, naming the file
    with pytest.raises(AssertionError, match="deploy/kubernetes/overlays/signin/auth.toml:3"):
        found_here = committed_secrets(repo)
        assert not found_here, "\n".join(found_here)


@pytest.mark.parametrize("path", ["secrets/asd_auth.toml", "secrets/access.yaml",
                                  "deploy/kubernetes/overlays/signin/auth.toml",
                                  "deploy/kubernetes/overlays/signin/access.yaml"])
def test_where_the_deployment_files_say_to_put_the_real_settings_is_git_ignored(path):
    """The files docker-compose.signin.yaml and the signin overlay tell the user to make."""
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, f"{path} must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--", path], cwd=REPO, capture_output=True, text=True).stdout
    assert tracked == "", f"committed: {tracked}"
