"""Package layering: prm.model never imports prm.data (prm.data's datasets use prm.model, not the
reverse), and prm.answers stands alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(m for m in sys.modules if m.startswith('prm')))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_prm_model_does_not_import_prm_data():
    files = sorted((ROOT / "prm" / "model").glob("*.py"))
    assert len(files) >= 4
    offending = {
        f.name: sorted(n for n in imports_of(f) if n == "prm.data" or n.startswith("prm.data."))
        for f in files
    }
    assert not {name: hits for name, hits in offending.items() if hits}
    assert "prm.model.backbones.Backbone" in imports_of(ROOT / "prm" / "data" / "dataset.py")  # one direction


def test_prm_answers_imports_no_other_prm_module():
    # `import prm` registers the config schemas (prm.config, prm.errors); nothing else comes along.
    assert imported_after("import prm.answers") == {"prm", "prm.answers", "prm.config", "prm.errors"}
