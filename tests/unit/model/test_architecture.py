"""The package's import structure: no import cycles (lazy imports inside functions included), nothing
under hybridpot/train/ or hybridpot/model/ imports OpenMM, and every term and architecture in the
registries builds and is named in errors."""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

import pytest

import hybridpot

PACKAGE = os.path.dirname(hybridpot.__file__)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def modules() -> Dict[str, str]:
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[module_name(path)] = path
    return found


def imports(path: str, name: str, known: Set[str]) -> Set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports included)."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return out


def graph() -> Dict[str, Set[str]]:
    found = modules()
    known = set(found)
    return {name: {m for m in imports(path, name, known) if m in known and m != name} for name, path in found.items()}


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert "hybridpot.model.hybrid" in edges and "hybridpot.physics.base" in edges["hybridpot.model.hybrid"]
    cycle = find_cycle(edges)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["hybridpot.train", "hybridpot.model"])
def test_training_and_the_model_never_import_openmm(package):
    found = modules()
    known = set(found)
    for name, path in found.items():
        if name == package or name.startswith(package + "."):
            bad = sorted(m for m in imports(path, name, known) | imports(path, name, set())
                         if m == "openmm" or m.startswith(("openmm.", "openmmtorch", "hybridpot.openmm")))
            assert not bad, f"{name} imports {bad}"


def test_registries_build_every_term_and_architecture_and_name_the_known_ones():
    from hybridpot.model import ARCHITECTURES, TERMS, build_model
    from hybridpot.physics.base import EnergyTerm

    for architecture in ARCHITECTURES:
        model = build_model({"elements": ["H", "O"], "architecture": architecture, "periodic": True,
                             "charges": {"enabled": True}, "electrostatics": {"enabled": True},
                             "dispersion": {"enabled": True}, "zbl": {"enabled": True}})
        assert list(model.terms) == list(TERMS)  # every registered term, in registry order
        assert all(isinstance(term, EnergyTerm) for term in model.terms.values())
        assert model.shared_terms == ["disp", "zbl"]
    with pytest.raises(ValueError, match="unknown architecture 'mace'; known: behler_parrinello, painn"):
        build_model({"elements": ["H"], "architecture": "mace"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'repulsion' in model config; known keys: .*zbl"):
        build_model({"elements": ["H"], "repulsion": {"enabled": True}})
