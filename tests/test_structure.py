"""The package's import structure, read with `ast` (nothing imported): no import cycle between modules, counting the
imports inside functions too; no module importing a module taught in a later chapter (the chapter is the notebook
holding its `#| default_exp`), at module level or inside a function; and imports of the package's own modules inside
functions only where a reason below says why (an optional dependency, or a documented load-time cost)."""
import ast, json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'margin_notes'

# (module, module it imports inside a function): why that import is not at module level
LAZY_OK = {
    ('report', 'style'): 'style imports matplotlib (the optional `book` extra): only a figure needs it',
    ('diagnose', 'style'): 'same: plot_diagnosis draws a figure',
    ('marc', 'models'): 'MARC.weight_norms uses the head-norm rule of models; importing a loss module loads no model or data code (tests/test_package.py)',
    ('cli', '*'): '`margin-notes --help` and `list` answer without importing torch (tests/test_package.py::test_help_is_fast)',
}


def _own_imports(tree: ast.Module, me: str, modules: set) -> set:
    "Modules of the package imported by the module-level statements of `tree` (not inside functions or classes)."
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split('.')[0])
            elif node.level == 1: out |= {a.name for a in node.names}
            elif node.module and node.module.split('.')[0] == 'margin_notes':
                parts = node.module.split('.')
                out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('margin_notes.')}
    return (out & modules) - {me}


def _lazy_imports(tree: ast.Module, me: str, modules: set) -> set:
    "Modules of the package imported inside functions (and methods) of `tree`."
    body = ast.Module(body=[n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in f.body],
                      type_ignores=[])
    return _own_imports(ast.Module(body=[n for n in ast.walk(body) if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[]),
                        me, modules)


def module_graph(lazy: bool = False) -> dict:
    "module -> the package's modules it imports at module level (and inside functions, with `lazy`)."
    modules = {p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    trees = {m: ast.parse((PKG / f'{m}.py').read_text(encoding='utf-8')) for m in sorted(modules)}
    return {m: _own_imports(t, m, modules) | (_lazy_imports(t, m, modules) if lazy else set()) for m, t in trees.items()}


def chapters() -> dict:
    "module -> chapter number of the notebook that exports it."
    out = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        for c in json.loads(nb.read_text(encoding='utf-8'))['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
            if m: out[m.group(1)] = int(re.match(r'\d+', nb.name).group())
    return out


def find_cycle(graph: dict):
    "One import cycle as a list of modules, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 1; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1: return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 2; stack.pop()
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c


def test_the_checks_can_fail():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None
    tree = ast.parse('from .b import x\nimport margin_notes.c\ndef f():\n    from .d import y\n')
    assert _own_imports(tree, 'a', {'a', 'b', 'c', 'd'}) == {'b', 'c'}     # the import inside a function does not count here
    assert _lazy_imports(tree, 'a', {'a', 'b', 'c', 'd'}) == {'d'}          # ... but here


def test_every_module_has_a_chapter():
    ch, g = chapters(), module_graph()
    assert set(g) <= set(ch), sorted(set(g) - set(ch))


def test_no_import_cycle_even_inside_functions():
    assert find_cycle(module_graph(lazy=True)) is None, find_cycle(module_graph(lazy=True))


def test_no_import_of_a_later_chapter():
    ch, g, gl = chapters(), module_graph(), module_graph(lazy=True)
    later = sorted(f"{a} ({ch[a]:02d}) imports {b} ({ch[b]:02d})" for a, deps in g.items() for b in deps if ch[b] > ch[a])
    assert not later, later
    lazy_later = sorted(f"{a} ({ch[a]:02d}) imports {b} ({ch[b]:02d}) inside a function" for a, deps in gl.items() for b in deps
                        if ch[b] > ch[a] and (a, '*') not in LAZY_OK)
    assert not lazy_later, lazy_later


def test_imports_inside_functions_have_a_reason():
    g, gl = module_graph(), module_graph(lazy=True)
    unexplained = sorted((a, b) for a in gl for b in gl[a] - g[a] if (a, b) not in LAZY_OK and (a, '*') not in LAZY_OK)
    assert not unexplained, f"import these at module level, or say in LAZY_OK why not: {unexplained}"
    stale = sorted(k for k in LAZY_OK if k[1] != '*' and k[1] not in gl.get(k[0], set()) - g.get(k[0], set()))
    assert not stale, f"no longer needed, remove from LAZY_OK: {stale}"


def test_the_book_is_in_dependency_order():
    "The chapters that export modules come before the experiment chapters, which export none (Part V)."
    ch = chapters()
    first_experiment = min(int(re.match(r'\d+', p.name).group()) for p in (ROOT / 'nbs').glob('[0-9]*.ipynb')
                           if int(re.match(r'\d+', p.name).group()) not in ch.values())
    assert max(ch.values()) < first_experiment, (max(ch.values()), first_experiment)
    assert sorted(ch.values()) == list(range(len(ch))), 'library chapters are numbered 00, 01, ... without gaps'
