"""nbdev notebook processor for the docs build: API docs without executing the chapters.

nbdev's own `exec_show_docs` processor executes, while it builds the docs, every cell of a chapter that
holds an import or an exported definition (under IN_TEST), so the site showed accidental smoke-run
outputs and the docs build ran training code. settings.ini therefore has `skip_procs = exec_show_docs`
and `procs = docs_procs:show_doc_outputs` (this module, on PYTHONPATH via scripts/build_docs.py).

`show_doc_outputs` fills only the `show_doc(...)` cells (the ones nbdev's `add_show_docs` inserts after
every exported definition, and any the author wrote): it evaluates the call against the installed library
(`margin_notes.<default_exp>` first, then any exported symbol by name through margin_notes._modidx) and
stores the rendered Markdown as the cell's output. Importing the library is cheap and deterministic; no
other cell runs, so every other output on the site is the committed one (see `make outputs`).
"""
from __future__ import annotations
import ast, importlib

from fastcore.basics import AttrDict

from nbdev.processors import Processor, add_links, _is_showdoc, _default_exp

LIB = 'margin_notes'


class _Names(dict):
    "Namespace for evaluating a show_doc call: the chapter's module, then every exported symbol by name."
    def __init__(self, module):
        super().__init__()
        from nbdev.showdoc import show_doc
        if module is not None: self.update(vars(module))
        self['show_doc'] = show_doc

    def __missing__(self, name):
        import pkgutil
        idx = importlib.import_module(f'{LIB}._modidx').d['syms']
        for mod, syms in idx.items():
            if f'{mod}.{name}' in syms:
                return getattr(importlib.import_module(mod), name)
        pkg = importlib.import_module(LIB)   # not (yet) in the index: any module that exports it
        for m in pkgutil.iter_modules(pkg.__path__):
            if m.name.startswith('_'): continue
            mod = importlib.import_module(f'{LIB}.{m.name}')
            if name in getattr(mod, '__all__', ()): return getattr(mod, name)
        try: return importlib.import_module(f'{LIB}.{name}') if name != LIB else importlib.import_module(LIB)
        except ImportError: pass
        import builtins
        if hasattr(builtins, name): return getattr(builtins, name)
        raise NameError(f'show_doc: {name!r} is neither in the chapter module nor exported by {LIB}')


class show_doc_outputs(Processor):
    "Render every show_doc cell from the library (the cheap replacement of nbdev's exec_show_docs)."
    def begin(self):
        # nbdev has already moved the `#| default_exp` line from the source into `directives_`
        exp = next((c.directives_['default_exp'][0] for c in self.nb.cells
                    if 'default_exp' in (getattr(c, 'directives_', None) or {})), None) or _default_exp(self.nb)
        self.module = importlib.import_module(f'{LIB}.{exp}') if exp else None

    def __call__(self, cell):
        if not _is_showdoc(cell): return
        src = '\n'.join(l for l in cell.source.splitlines() if not l.lstrip().startswith('#|'))
        tree = ast.parse(src)
        ns, outs = _Names(self.module), []
        for stmt in tree.body:
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                    and getattr(stmt.value.func, 'id', None) == 'show_doc'):
                raise ValueError(f'show_doc cell with other code (keep show_doc cells to show_doc calls):\n{src}')
            res = eval(compile(ast.Expression(stmt.value), '<show_doc>', 'eval'), {}, ns)
            md = res._repr_markdown_()
            outs.append(AttrDict(output_type='display_data', metadata=AttrDict(),
                                 data=AttrDict({'text/markdown': md.splitlines(keepends=True)})))
        cell.outputs = outs
        add_links(cell)
