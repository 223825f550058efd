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


# ------------------------------------------------------------------------ import circles in prm/


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT, package: str = "prm") -> dict[str, set[str]]:
    """``{module: the modules of package its imports run}`` over ``root/package/**/*.py``, counting
    imports inside functions and relative imports. Importing ``a.b.c`` runs ``a``, ``a.b`` and
    ``a.b.c`` (``from a.b import c``: ``c`` when it is a module); the packages that contain the
    importing module are left out (Python has started them already)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        containing = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 1)}
        imported = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                imported += [base] + [f"{base}.{alias.name}" for alias in node.names]
        targets = set()
        for module in imported:
            parts = module.split(".")
            runs = {".".join(parts[:n]) for n in range(1, len(parts) + 1)} & files.keys()
            targets |= runs - containing - {name}
        graph[name] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each an import circle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def test_import_circles_are_found_inside_functions_and_through_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg.a import anything\n")  # into the circle, not part of it
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"} and graph["pkg.d"] == {"pkg.a"}
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_no_import_circle_in_prm():
    assert import_circles(import_graph()) == []


def test_no_import_circle_runs_through_prm_checkpoint():
    graph = import_graph()
    assert [c for c in import_circles(graph) if any(m.startswith("prm.checkpoint") for m in c)] == []
    assert "prm.checkpoint.store" in graph and "prm.model.build" in graph
    # Checkpoints know files, not models: nothing under prm.checkpoint reaches prm.model.
    reached, todo = set(), [m for m in graph if m.startswith("prm.checkpoint")]
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert sorted(m for m in reached if m.startswith("prm.model")) == []


def test_each_checkpoint_module_imports_only_the_ones_below_it():
    graph = import_graph()
    inside = {
        name: sorted(t.removeprefix("prm.checkpoint.") for t in graph[name] if t.startswith("prm.checkpoint"))
        for name in graph
        if name.startswith("prm.checkpoint.")
    }
    assert inside == {
        "prm.checkpoint.layout": [],
        "prm.checkpoint.codec": ["layout"],
        "prm.checkpoint.manifest": ["layout"],
        "prm.checkpoint.discovery": ["layout", "manifest"],
        "prm.checkpoint.store": ["codec", "discovery", "layout", "manifest"],
    }


def test_the_prm_is_built_in_one_place():
    # Training, evaluation and checkpoint loading all go through prm.model.build.build_prm.
    builders = set()
    for path in sorted((ROOT / "prm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ProcessRewardModel":
                builders.add(path.relative_to(ROOT).as_posix())
    assert builders == {"prm/model/build.py"}


def test_the_lora_command_line_module_leaves_the_adapter_functions_alone():
    # prm.model.lora.merging builds whole PRMs (it imports prm.model.build): nothing in the adapters'
    # own module imports it, and importing it does not shadow lora.merge (the function).
    import prm.model.lora as lora
    import prm.model.lora.merging as merging

    assert callable(lora.merge) and lora.merge.__module__ == "prm.model.lora"
    assert merging.main.__module__ == "prm.model.lora.merging"
    assert "prm.model.lora.merging" not in import_graph()["prm.model.lora"]
