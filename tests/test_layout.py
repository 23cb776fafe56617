"""The package's house rules, read from the source (no imports executed, milliseconds):
imports point down the layers with no circles, per-method rules only in methods.py, engines and
learner apart, no private names across packages, and the README's layout table complete."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "opd_megatron"

LAYERS: Dict[str, int] = {
    "errors": 0, "types": 0, "faults": 0,
    "config": 1,
    "methods": 2,
    "objective": 3, "models": 3, "data": 3,
    "learner": 4, "engines": 4, "evaluation": 4,
    "plan": 5, "report": 5,
    "run": 6,
    "cli": 7, "__main__": 7,
}
"""Layer of each top-level package or module: CLI -> run -> plan/report -> learner, engines,
evaluation -> objective, models, data -> methods -> config -> errors/types/faults."""

SIDEWAYS: Set[Tuple[str, str]] = {("report", "plan"), ("__main__", "cli"),
                                  ("evaluation", "engines")}
"""Imports allowed within one layer, one way only (``opd eval`` builds an engine client; the
evaluator itself takes a plain generate function)."""


def _modules() -> Dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(path: Path) -> List[Tuple[str, List[str], int]]:
    """(module imported, names taken from it, line) for every opd_megatron import, also the
    ones inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("opd_megatron"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((full if full in MODULES else _resolve(node.module), [a.name], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(_resolve(a.name), [], node.lineno) for a in node.names if a.name.startswith("opd_megatron")]
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> Dict[str, Set[str]]:
    return {m: {target for target, _, _ in _imports(p)} - {m} for m, p in MODULES.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports() -> List[str]:
    bad = []
    for m, p in MODULES.items():
        src = _top(m)
        if src == "":
            continue
        for target, _, line in _imports(p):
            dst = _top(target)
            if dst in ("", src):
                continue
            if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and (src, dst) not in SIDEWAYS):
                bad.append(f"{p.relative_to(REPO)}:{line} imports {target}")
    return bad


def test_every_module_has_a_layer():
    tops = {_top(m) for m in MODULES} - {""}
    assert tops <= set(LAYERS), f"add to LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_point_down():
    assert upward_imports() == []


def test_engines_and_learner_never_import_each_other():
    pairs = [(m, t) for m, ts in import_graph().items() for t in ts
             if {_top(m), _top(t)} == {"engines", "learner"}]
    assert pairs == []


def test_no_private_names_across_packages():
    bad = []
    for m, p in MODULES.items():
        for target, names, line in _imports(p):
            if _top(target) != _top(m) and any(n.startswith("_") for n in names):
                bad.append(f"{p.relative_to(REPO)}:{line} {target} {names}")
            if _top(target) != _top(m) and target.rpartition(".")[2].startswith("_") \
                    and not target.endswith("__init__"):
                bad.append(f"{p.relative_to(REPO)}:{line} {target}")
    assert bad == []


def test_method_rules_only_in_methods_py():
    pattern = re.compile(r"""\.method\s*(==|!=|\bin\b|\bnot in\b)|method\s*(==|!=)\s*["']""")
    bad = [f"{p.relative_to(REPO)}:{i}" for m, p in MODULES.items() if m != "opd_megatron.methods"
           for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert bad == []


def test_fault_knobs_read_only_in_faults_py():
    bad = [f"{p.relative_to(REPO)}" for m, p in MODULES.items()
           if m != "opd_megatron.faults" and "OPD_FAULT_" in p.read_text()]
    assert bad == []


def _readme_layout_rows() -> List[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|\s*`([^`]+)`", section, flags=re.M)


def test_readme_layout_table_lists_every_package_and_module():
    listed = {row.rstrip("/") for row in _readme_layout_rows()}
    wanted = {str(p.parent.relative_to(REPO)) for p in PKG.glob("*/__init__.py")} | {
        str(p.relative_to(REPO)) for p in PKG.glob("*.py") if p.name != "__init__.py"}
    assert wanted - listed == set(), "README ## Layout misses these"
    assert {r for r in listed if r.startswith("opd_megatron")} - wanted == set(), "README lists what is gone"


def test_paths_named_in_docs_and_docstrings_exist():
    pattern = re.compile(r"\b(opd_megatron(?:/[A-Za-z_0-9]+)+\.py)\b")
    texts = [REPO / "README.md", *PKG.rglob("*.py")]
    missing = sorted({f"{t.relative_to(REPO)}: {m}" for t in texts for m in pattern.findall(t.read_text())
                      if not (REPO / m).is_file()})
    assert missing == []


def test_dotted_names_in_docs_and_docstrings_resolve():
    """A dotted ``opd_megatron`` name in text names a module, or a name defined in one."""
    pattern = re.compile(r"\bopd_megatron(?:\.[A-Za-z_0-9]+)+")
    texts = [REPO / "README.md", *PKG.rglob("*.py"), *(REPO / "slurm").glob("*"), *(REPO / "tests").glob("*.py")]
    bad = set()
    for t in texts:
        if not t.is_file():
            continue
        for name in pattern.findall(t.read_text()):
            parts = name.split(".")
            k = len(parts)
            while k and ".".join(parts[:k]) not in MODULES:
                k -= 1
            rest = parts[k:]
            if not k or len(rest) > 1 or (rest and not re.search(rf"\b{rest[0]}\b",
                                                                 MODULES[".".join(parts[:k])].read_text())):
                bad.add(f"{t.relative_to(REPO)}: {name}")
    assert sorted(bad) == []


def test_module_file_names_are_unique():
    """One name, one module: no two files of the package share a name (``__init__.py`` aside)."""
    names = [p.name for p in PKG.rglob("*.py") if p.name != "__init__.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []
