"""The repository's own documents: every section of docs/methods.md cited anywhere exists, and nothing
points at documents outside the repository."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"docs/methods\.md#([A-Za-z0-9_-]+)")


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    suffixes = {".py", ".md", ".yaml", ".yml", ".cfg", ".toml", ".sh", ".txt"}
    return [ROOT / n for n in names.split() if Path(n).suffix in suffixes or n == "Makefile"]


def test_slug():
    assert slug("Betty 0.2.1") == "betty-021"
    assert slug("transformers offline, no torchvision") == "transformers-offline-no-torchvision"


def test_every_cited_section_of_docs_methods_exists():
    text = (ROOT / "docs" / "methods.md").read_text()
    anchors = {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    cited = {}
    for path in tracked_text_files():
        if path.exists():
            for anchor in CITED.findall(path.read_text(errors="replace")):
                cited.setdefault(anchor, []).append(path.relative_to(ROOT).as_posix())
    assert len(cited) >= 5  # the code cites the document
    missing = {anchor: files for anchor, files in cited.items() if anchor not in anchors}
    assert not missing, f"cited sections missing from docs/methods.md: {missing}"


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"METHODS\.md|STACK\.md|\.\./shared|/work/shared|shared/reference")
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in tracked_text_files()
        if path.exists() and path.name != "test_docs.py"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, hits
