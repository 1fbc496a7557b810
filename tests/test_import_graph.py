"""The house rules of the package layout, checked on the source text (no JAX, under a second).

* No import circle between the modules of ``jaxmim/``, ``convert/`` and ``launch/``: every
  ``import`` / ``from ... import`` statement counts, at module level or inside a function (a
  lazy import still closes a circle at run time). Importing ``a.b`` also runs ``a/__init__``;
  that implicit parent edge is not counted, as import-linter and pydeps do not count it.
* Backbones (``jaxmim/models/``) import no method (``jaxmim/methods/``).
* No module is larger than ~600 lines, apart from the PyTorch twins of ``convert/`` and the
  augmentation ops of ``jaxmim/data/augment.py``.

Run it alone: ``python -m pytest -q tests/test_import_graph.py``; on a circle it prints every
cycle as ``a -> b -> a``.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('jaxmim', 'convert', 'launch')
MAX_LINES = 600
LARGE_OK = {'jaxmim/data/augment.py'}
"""Modules allowed past :data:`MAX_LINES` besides the twins of ``convert/``."""
CONVERT_CORE = {'convert/__init__.py', 'convert/_cli.py', 'convert/_common.py', 'convert/_entries.py',
                'convert/_layout.py', 'convert/official.py', 'convert/export.py', 'convert/import.py', 'convert/extract_backbone.py'}
"""The model-agnostic core of ``convert/``; every other file there is a conversion family (twin + key
tables)."""


def _modules() -> dict[str, str]:
    """``{dotted module name: path relative to the repository}`` of every ``.py`` of the packages."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            if '__pycache__' in dirpath:
                continue
            for f in files:
                if f.endswith('.py'):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                    name = rel[:-3].replace(os.sep, '.')
                    out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = rel
    return out


def _edges(modules: dict[str, str]) -> dict[str, set[str]]:
    """Explicit import edges between the project's modules (see the module docstring)."""
    edges = {}
    for name, rel in modules.items():
        is_pkg = rel.endswith('__init__.py')
        tree = ast.parse(open(os.path.join(ROOT, rel)).read(), rel)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split('.')[:len(name.split('.')) - node.level + is_pkg]
                    mod = '.'.join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ''
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
                targets = [f'{mod}.{a.name}' if f'{mod}.{a.name}' in modules else mod for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:   # `import a.b.c` of a non-module attribute path
                    t = t.rpartition('.')[0]
                if t and t != name:
                    deps.add(t)
        edges[name] = deps
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a closed path
    ``[a, b, ..., a]`` through it, sorted."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:   # one closed path through the component, found by BFS from its first node
        start, members = comp[0], set(comp)
        prev, frontier = {start: None}, [start]
        while frontier and start not in [w for v in frontier for w in edges[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & members):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in edges[v])
        path = [last]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
    return sorted(cycles)


def test_cycle_finder_sees_a_known_circle_and_a_lazy_import(tmp_path):
    # The finder itself, on hand-made graphs: a 3-cycle, a self-free chain, a 2-cycle.
    edges = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}, 'e': {'f'}, 'f': {'e'}, 'g': set()}
    assert find_cycles(edges) == [['a', 'b', 'c', 'a'], ['e', 'f', 'e']]
    assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_edges_count_lazy_and_relative_imports(monkeypatch, tmp_path):
    (tmp_path / 'jaxmim').mkdir()
    (tmp_path / 'jaxmim' / '__init__.py').write_text('')
    (tmp_path / 'jaxmim' / 'a.py').write_text('def f():\n    from jaxmim import b\n')
    (tmp_path / 'jaxmim' / 'b.py').write_text('from . import a\nfrom jaxmim.a import f\n')
    monkeypatch.setattr(__import__(__name__), 'ROOT', str(tmp_path))
    mods = _modules()
    edges = _edges(mods)
    assert edges['jaxmim.a'] == {'jaxmim.b'} and edges['jaxmim.b'] == {'jaxmim.a'}
    assert find_cycles(edges) == [['jaxmim.a', 'jaxmim.b', 'jaxmim.a']]


def test_no_import_circles():
    cycles = find_cycles(_edges(_modules()))
    assert not cycles, 'import circles:\n' + '\n'.join(' -> '.join(c) for c in cycles)


def test_backbones_import_no_method():
    modules = _modules()
    edges = _edges(modules)
    bad = {m: sorted(d for d in deps if d.startswith('jaxmim.methods'))
           for m, deps in edges.items() if m.startswith('jaxmim.models')}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_module_past_the_size_limit():
    too_big = []
    for rel in _modules().values():
        if rel in LARGE_OK or (rel.startswith('convert/') and rel not in CONVERT_CORE):
            continue
        n = sum(1 for _ in open(os.path.join(ROOT, rel)))
        if n > MAX_LINES:
            too_big.append(f'{rel}: {n} lines')
    assert not too_big, f'modules over {MAX_LINES} lines: {too_big}'
