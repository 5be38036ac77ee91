"""The package layers: imports point down only, no cycle between layers, lazy imports say why.

    .venv/bin/python -m pytest -q tests/test_layers.py

Parses (never imports) every module of the five packages and checks, from the bottom up:

    base        mllm.registry, mllm.constants              imports nothing first-party
    connectors  connectors                                 -> base
    core        mllm (config, vision, llm, model, anyres,  -> base, connectors
                checkpoint, gen, ...)
    data        data_pipelines                             -> base, connectors, core
    train       train_stages                               -> base, connectors, core, data
    eval        eval                                       -> base, connectors, core, data
    app         mllm.app (cli, commands, chat, export,     -> everything
                demo)

and that the files an export copies next to its weights (``mllm/app/export/remote_code``) import no
first-party module at all (they run inside plain transformers). A first-party import inside a function
must carry a comment on its line (or the line above) saying why it is lazy.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mllm", "connectors", "data_pipelines", "train_stages", "eval")
REMOTE_CODE = "mllm.app.export.remote_code"

ALLOWED: Dict[str, Set[str]] = {
    "base": set(),
    "connectors": {"base"},
    "core": {"base", "connectors"},
    "data": {"base", "connectors", "core"},
    "train": {"base", "connectors", "core", "data"},
    "eval": {"base", "connectors", "core", "data"},
    "app": {"base", "connectors", "core", "data", "train", "eval"},
}


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if module in ("mllm.registry", "mllm.constants"):
        return "base"
    if module == "mllm.app" or module.startswith("mllm.app."):
        return "app"
    return {"mllm": "core", "connectors": "connectors", "data_pipelines": "data", "train_stages": "train",
            "eval": "eval"}[top]


class Import:
    def __init__(self, source: str, target: str, line: int, local: bool, commented: bool):
        self.source, self.target, self.line, self.local, self.commented = source, target, line, local, commented

    def __repr__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}{' (in a function)' if self.local else ''}"


def modules() -> Iterator[Tuple[str, str]]:
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, pkg)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    mod = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    yield (mod[: -len(".__init__")] if mod.endswith(".__init__") else mod), path


def imports_of(module: str, path: str) -> List[Import]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    tree = ast.parse(text, filename=path)
    is_package = path.endswith("__init__.py")
    found: List[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    targets = [".".join(base + ([child.module] if child.module else []))]
                else:
                    targets = [child.module or ""]
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            else:
                visit(child, inside)
                continue
            span = lines[child.lineno - 1:child.end_lineno]
            commented = any("#" in s for s in span) or lines[child.lineno - 2].strip().startswith("#")
            for t in targets:
                if t.split(".")[0] in PACKAGES:
                    found.append(Import(module, t, child.lineno, in_function, commented))

    visit(tree, False)
    return found


ALL = [imp for mod, path in modules() for imp in imports_of(mod, path)]


def test_the_parser_sees_the_packages():
    # guards the test itself: a broken walk would make every check below pass vacuously
    sources = {layer_of(i.source) for i in ALL}
    assert sources >= {"connectors", "core", "data", "train", "eval", "app"}
    assert len(ALL) > 150


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down_only(layer):
    bad = [i for i in ALL if layer_of(i.source) == layer and not i.source.startswith(REMOTE_CODE)
           and layer_of(i.target) != layer and layer_of(i.target) not in ALLOWED[layer]]
    assert not bad, f"{layer} may import only {sorted(ALLOWED[layer]) or 'nothing first-party'}: {bad}"


def test_no_cycle_between_layers():
    edges: Dict[str, Set[str]] = {}
    for i in ALL:
        a, b = layer_of(i.source), layer_of(i.target)
        if a != b:
            edges.setdefault(a, set()).add(b)
    # depth-first search for a back edge
    state: Dict[str, int] = {}

    def cycle_from(node: str, path: List[str]):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state:
                found = cycle_from(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            assert cycle_from(node, []) is None


def test_no_cycle_between_packages_outside_the_app():
    # mllm's core and the other packages: the top-level package graph, the app layer set apart
    def package(m: str) -> str:
        return "mllm.app" if layer_of(m) == "app" else m.split(".")[0]

    pairs = {(package(i.source), package(i.target)) for i in ALL if package(i.source) != package(i.target)}
    both_ways = sorted((a, b) for a, b in pairs if (b, a) in pairs and not ({a, b} & {"mllm.app"}))
    # mllm's registry / constants are imported by connectors while mllm's model imports connectors: that
    # pair is the one the layers allow (base below connectors below core), and nothing else goes both ways
    assert set(both_ways) <= {("connectors", "mllm"), ("mllm", "connectors")}
    for i in ALL:
        if i.source.startswith("connectors"):
            assert layer_of(i.target) in ("base", "connectors"), i


def test_remote_code_imports_no_first_party_module():
    bad = [i for i in ALL if i.source.startswith(REMOTE_CODE) and not i.target.startswith(REMOTE_CODE)]
    assert not bad, f"exported modeling files must run on transformers alone: {bad}"


def test_function_local_first_party_imports_say_why():
    bad = [i for i in ALL if i.local and not i.commented]
    assert not bad, f"a lazy import keeps a comment saying why (else import it at the top): {bad}"


def test_core_knows_nothing_of_training_eval_or_the_app():
    bad = [i for i in ALL if layer_of(i.source) == "core" and layer_of(i.target) in ("train", "eval", "app", "data")]
    assert not bad, bad
