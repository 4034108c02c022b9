"""The docs: README.md is a short guide whose every link resolves, the MkDocs site builds
strictly, and the CLI reference (docs/gen_cli.py, an MkDocs hook) lists every command of
the parser."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MAX_README_LINES = 300

# [text](target) and ![alt](target), outside code; the target up to a space or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _gen_cli():
    spec = importlib.util.spec_from_file_location("docs_gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _links(markdown: str) -> list[str]:
    out, fence = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        line = re.sub(r"`[^`]*`", lambda m: m.group(0) if "](" not in m.group(0) else "", line)
        out += LINK.findall(line)
    return out


def _relative(target: str) -> bool:
    return not (re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")))


MARKDOWN = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_readme_is_a_short_guide():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    text = "\n".join(lines)
    for command in ("scripts/run-app", "scripts/run-tests"):
        assert command in text, command
    assert "docs/img/" in text, "README shows a picture of the app"


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    text = page.read_text()
    missing = []
    for target in _links(text):
        if not _relative(target):
            continue
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(REPO)}: links to missing files: {missing}"


def test_readme_links_to_the_docs_and_its_pictures():
    targets = [t for t in _links((REPO / "README.md").read_text()) if _relative(t)]
    assert any(t.startswith("docs/") and t.endswith(".md") for t in targets)
    assert any(t.startswith("docs/img/") and t.endswith(".png") for t in targets)


def test_images_are_small_pngs():
    for png in (DOCS / "img").glob("*"):
        assert png.suffix == ".png" and png.stat().st_size < 200_000, png


def test_cli_reference_lists_every_command_of_the_parser():
    from asd.cli import build_parser

    gen = _gen_cli()
    reference = gen.reference()
    paths = [path for path, _ in gen.commands(build_parser())]
    assert len(paths) >= 10
    for path in paths:
        assert f"### `asd {' '.join(path)}`" in reference, path
        assert f"usage: asd {' '.join(path)}" in reference, path
    assert gen.MARKER in (DOCS / "cli.md").read_text()


def test_mkdocs_builds_strictly_with_the_generated_cli_reference(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.fail("mkdocs is not installed: pip install -c constraints.txt -e '.[test]'")
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNING" not in run.stderr, run.stderr
    cli = (site / "cli" / "index.html").read_text()
    from asd.cli import build_parser

    for path, _ in _gen_cli().commands(build_parser()):
        assert f"usage: asd {' '.join(path)}" in cli, path
    assert (site / "img" / "app-anomalous-clip.png").exists()
    for page in ("security", "train-your-own", "concepts", "testing", "benchmarks/speed"):
        assert (site / page / "index.html").exists(), page


def test_links_to_repository_files_outside_docs_become_site_safe():
    gen = _gen_cli()
    page = DOCS / "benchmarks" / "speed.md"
    md = ("[`benchmarks/speed/report.md`](../../benchmarks/speed/report.md) and "
          "[Results](results.md) and ![curve](../../benchmarks/enrolment/enrolment.png) and "
          "[gone](../../no/such/file.md)\n```\n[in code](../../LICENSE)\n```\n")
    plain = gen._outside_links(md, page, DOCS, None)
    assert plain.startswith("`benchmarks/speed/report.md` and [Results](results.md) and "
                            "*curve* (`benchmarks/enrolment/enrolment.png` in the repository) and "
                            "[gone](../../no/such/file.md)")  # a missing file is left for MkDocs to report
    assert "[in code](../../LICENSE)" in plain
    linked = gen._outside_links(md, page, DOCS, "https://example.com/asd")
    assert "(https://example.com/asd/blob/HEAD/benchmarks/speed/report.md)" in linked
    assert "(https://example.com/asd/raw/HEAD/benchmarks/enrolment/enrolment.png)" in linked


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The site's own check: a page linking to a page that does not exist fails the build."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[a page that is not there](missing.md)\n")
    (tmp_path / "mkdocs.yml").write_text(
        f"site_name: t\nstrict: true\ntheme: {{name: material}}\nhooks:\n  - {DOCS / 'gen_cli.py'}\n")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode != 0 and "missing.md" in run.stdout + run.stderr
