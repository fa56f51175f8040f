"""The layout's rules, checked from the source: no import cycles between unisde's modules (imports inside
functions included), no library module imports the command-line interface, samplers never import the
parameterisations, and every source a docstring cites resolves in docs/references.md."""

from __future__ import annotations

import ast
import pathlib

import unisde

ROOT = pathlib.Path(unisde.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
    """unisde modules imported anywhere in the file, at run time (a `from pkg import name` naming a submodule counts
    as it; `if TYPE_CHECKING:` blocks do not)."""
    out = set()
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]:
        block.body = []  # annotations only: never imported at run time
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.startswith("unisde"):
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    edges = {}
    for name, path in files.items():
        # a package's __init__ is imported with any of its submodules; an edge to a parent package is not a cycle
        edges[name] = {m for m in imports_of(path, modules) if m != name and not name.startswith(m + ".")}
    return edges


def test_no_relative_imports_and_no_import_cycles():
    edges = graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    # package __init__ files re-export their own submodules; only cycles between distinct modules count
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_library_modules_do_not_import_the_cli():
    offenders = [
        name
        for name, deps in graph().items()
        if not name.startswith("unisde.cli") and any(d.startswith("unisde.cli") for d in deps)
    ]
    assert not offenders, offenders


def test_samplers_see_the_schedule_and_denoised_not_the_parameterisation():
    """A sampler gets the schedule and x̂0 (ε̂ / score through the shared kernels), never the parameterisation object:
    no sampler module imports unisde.parameterizations."""
    offenders = [
        name
        for name, deps in graph().items()
        if name.startswith("unisde.samplers") and any(d.startswith("unisde.parameterizations") for d in deps)
    ]
    assert not offenders, offenders


def test_every_cited_source_is_in_docs_references():
    """Docstrings cite sources as "Author year, eq. N [KEY]"; every KEY so cited is an entry of docs/references.md
    (a paper heading, a list entry or a derivation note), and no docstring cites the notes a user never sees."""
    import re

    text = (ROOT.parent / "docs" / "references.md").read_text()
    keys = set(re.findall(r"^(?:#+ |- |\| )\[([^\]]+)\]", text, re.M)) | set(re.findall(r" and \[([^\]]+)\]", text))
    cite = re.compile(
        r"(?:\b\d{4}[a-z]?|\beqs?\. ?[\w.–-]+|§ ?[\w.]+|\b(?:Algorithm|Table|Appendix|App\.|Theorem|Fig\.) ?\w+)"
        r"[^\[\n]{0,40}\[([A-Z][A-Za-z0-9+\-]*)\]"
    )
    unresolved = sorted(
        {
            f"{path.relative_to(ROOT.parent)}: [{match.group(1)}]"
            for path in ROOT.rglob("*.py")
            for match in cite.finditer(path.read_text())
            if match.group(1) not in keys
        }
    )
    assert not unresolved, unresolved
    stale = sorted(
        str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("*.py") if re.search(r"seed 000|DESIGN §", p.read_text())
    )
    assert not stale, stale
