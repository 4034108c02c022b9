"""MkDocs hook (``hooks:`` in mkdocs.yml) and script: the CLI reference, from the parser.

- At build time, ``on_page_markdown`` replaces the ``<!-- cli-reference -->`` marker in
  ``docs/cli.md`` with every command's ``--help``, formatted from ``asd.cli.build_parser()``,
  so the reference cannot drift from the code.
- It also rewrites links from a docs page to files of the repository outside ``docs/``
  (``../benchmarks/speed/report.md``): they resolve when the Markdown is read in the
  repository, but are not part of the site. With ``repo_url`` set in mkdocs.yml they
  point at the file in the repository; without it they become the file's path as text.
- ``python docs/gen_cli.py`` prints the reference (Markdown) to stdout.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
WIDTH = 100  # help text is wrapped at a fixed width, so the page is the same on every machine
REPO = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    src = REPO / "src"
    if str(src) not in sys.path and not _importable():
        sys.path.insert(0, str(src))
    from asd.cli import build_parser

    return build_parser()


def _importable() -> bool:
    try:
        import asd.cli  # noqa: F401
    except ImportError:
        return False
    return True


def commands(parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()):
    """(path of names, parser) for every command and sub-command, depth first, parser order."""
    parser = parser or _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from commands(sub, prefix + (name,))


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        return parser.format_help().rstrip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def reference() -> str:
    """The reference as Markdown: ``asd --help``, then one section per command."""
    parser = _parser()
    out = ["### `asd`", "", "```text", _help(parser), "```", ""]
    for path, sub in commands(parser):
        out += [f"### `asd {' '.join(path)}`", "", "```text", _help(sub), "```", ""]
    return "\n".join(out)


# -- MkDocs hooks ------------------------------------------------------------------------

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _outside_links(markdown: str, page_path: Path, docs_dir: Path, repo_url: str | None) -> str:
    def fix(m: re.Match) -> str:
        bang, text, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        file_part = target.split("#", 1)[0]
        resolved = (page_path.parent / file_part).resolve()
        try:
            resolved.relative_to(docs_dir)
            return m.group(0)  # a page or file of the site: MkDocs checks it
        except ValueError:
            pass
        try:
            rel = resolved.relative_to(REPO).as_posix()
        except ValueError:
            return m.group(0)
        if not resolved.exists():
            return m.group(0)  # left for MkDocs to report
        if repo_url:
            kind = "raw" if bang else "blob"
            return f"{bang}[{text}]({repo_url.rstrip('/')}/{kind}/HEAD/{rel})"
        if bang:
            return f"*{text}* (`{rel}` in the repository)"
        return text if text.strip("`") == rel else f"{text} (`{rel}`)"

    out, fence = [], False
    for line in markdown.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fence = not fence
        out.append(line if fence else _LINK.sub(fix, line))
    return "".join(out)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri == "cli.md":
        markdown = markdown.replace(MARKER, reference())
    return _outside_links(markdown, Path(page.file.abs_src_path), Path(config["docs_dir"]).resolve(),
                          config.get("repo_url"))


if __name__ == "__main__":
    print(reference())
