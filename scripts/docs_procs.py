"""nbdev notebook processor for the docs build: API docs without executing the chapters.

nbdev's own `exec_show_docs` processor executes, while it builds the docs, every cell of a chapter that
holds an import or an exported definition (under IN_TEST), so the site showed accidental smoke-run
outputs and the docs build ran training code. settings.ini therefore has `skip_procs = exec_show_docs`
and `procs = docs_procs:show_doc_outputs` (this module, on PYTHONPATH via scripts/build_docs.py).

`show_doc_outputs` fills only the `show_doc(...)` cells (the ones nbdev's `add_show_docs` inserts after
every exported definition, and any the author wrote): it evaluates the call against the installed library
(`margin_notes.<default_exp>` first, then any exported symbol by name through margin_notes._modidx) and
stores the rendered Markdown as the cell's output. Importing the library is cheap and deterministic; no
other cell runs, so every other output on the site is the committed one (see `make outputs`). It also
 - gives every "source" link the real line number of the symbol (nbdev writes `#LNone`, see `fix_source_link`);
 - links backticked names in the docstring, but not inside the signature's code block (nbdev's `add_links`
   works line by line and rewrote names in parameter comments into raw "[`x`](https://...)" text).

`chapter_links` turns prose mentions "chapter 29", "chapters 13–17", "chapter 13_mr2" of every Markdown cell
and Markdown output into links to the chapter pages (`link_chapters`). `download_link` puts a "Download this
notebook" link on every page; scripts/build_docs.py copies the committed notebooks to `_docs/notebooks/`.
settings.ini: `procs = docs_procs:show_doc_outputs docs_procs:chapter_links docs_procs:download_link` (in this
order: the chapter links also go into the show_doc docstrings).
"""
from __future__ import annotations
import ast, functools, importlib, json, re
from pathlib import Path

from fastcore.basics import AttrDict

from nbdev.processors import Processor, add_links, _is_showdoc, _default_exp

from check_site import page_name   # one page-naming rule for the build and the site check (both in scripts/)

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
            md, _ = fix_source_link(md, source_line(getattr(res, 'sym', None), getattr(res, 'fn', '') or ''))
            outs.append(AttrDict(output_type='display_data', metadata=AttrDict(),
                                 data=AttrDict({'text/markdown': md.splitlines(keepends=True)})))
        cell.outputs = outs
        add_links(cell)
        for o in cell.outputs:   # add_links also rewrote names inside the signature's code block: undo that there
            md, _ = strip_code_links(''.join(o.data['text/markdown']))
            o.data['text/markdown'] = md.splitlines(keepends=True)


def _here(nb) -> str | None:
    "The page (`premise.html`) of the notebook being processed."
    p = getattr(nb, 'path_', None)
    return page_name(Path(p).stem) + '.html' if p else None


class chapter_links(Processor):
    """Prose mentions of chapters become links to the chapter pages: in Markdown cells, Markdown outputs, table and
    figure captions (`#| tbl-cap:` / `#| fig-cap:`) and the page's description (the frontmatter nbdev wrote)."""
    def begin(self):
        self.chapters, self.here = chapter_table(), _here(self.nb)

    def __call__(self, cell):
        if cell.cell_type == 'markdown':
            cell.source, _ = link_chapters(cell.source, self.chapters, self.here)
        if cell.cell_type == 'code' and '-cap:' in cell.source:
            cell.source = _CAPTION_RE.sub(lambda m: m.group(1) + link_chapters(m.group(2), self.chapters, self.here,
                                                                               titles=False)[0], cell.source)
        for o in cell.get('outputs', []) or []:
            data = o.get('data') or {}
            if 'text/markdown' in data:
                v = data['text/markdown']
                md, k = link_chapters(''.join(v) if isinstance(v, list) else v, self.chapters, self.here)
                if k: data['text/markdown'] = md.splitlines(keepends=True) if isinstance(v, list) else md

    def end(self):
        cells = self.nb.cells
        fm = _frontmatter(cells[0]) if cells else None
        if fm and isinstance(fm.get('description'), str):
            d, k = link_chapters(fm['description'], self.chapters, self.here)
            if k: fm['description'] = d; _set_frontmatter(cells[0], fm)


# a Quarto caption option of a code cell: `#| tbl-cap: "..."` (a YAML string: links without a "title")
_CAPTION_RE = re.compile(r'^(#\|\s*(?:tbl|fig)-cap:\s*)(.*)$', re.M)


def _frontmatter(cell) -> dict | None:
    "The YAML frontmatter nbdev's FrontmatterProc put into the first (raw) cell, as a dict."
    if cell.cell_type != 'raw' or not cell.source.startswith('---'): return None
    m = re.match(r'---[ \t]*\n(.*?)\n---[ \t]*(?:\n|$)', cell.source, re.S)
    if not m: return None
    import yaml
    fm = yaml.safe_load(m.group(1))
    return fm if isinstance(fm, dict) else None


def _set_frontmatter(cell, fm: dict):
    import yaml
    cell.source = f'---\n{yaml.dump(fm, allow_unicode=True)}\n---\n\n'


NOTEBOOKS_DIR = 'notebooks'   # _docs/notebooks/<stem>.ipynb: the committed notebooks (scripts/build_docs.py)


class download_link(Processor):
    "A 'Download this notebook' link (Quarto `code-links`, under the page's table of contents) on every page."
    def end(self):
        p = getattr(self.nb, 'path_', None)
        fm = _frontmatter(self.nb.cells[0]) if p and self.nb.cells else None
        if fm is None: return
        fm['code-links'] = [{'text': 'Download this notebook (.ipynb)', 'icon': 'download',
                             'href': f'{NOTEBOOKS_DIR}/{Path(p).name}'}]
        _set_frontmatter(self.nb.cells[0], fm)


# ---------------------------------------------------------------- text helpers (pure functions, tested in tests/test_docs_procs.py)
# Regions of Markdown in which nothing is rewritten: fenced code, headings, HTML comments and elements, inline code,
# math, links and images, Quarto shortcodes. The first alternative that matches at a position wins.
_PROTECTED = re.compile(r"""
    (?P<fence>^[ \t]*(?P<ftick>`{3,}|~{3,})[^\n]*\n(?:.*?\n)??[ \t]*(?P=ftick)[ \t]*$)
  | (?P<heading>^[ \t]{0,3}\#{1,6}(?:[ \t][^\n]*)?$)
  | (?P<comment><!--.*?-->)
  | (?P<code>(?P<tick>`+).+?(?P=tick))
  | (?P<element><(?P<tag>a|code|pre|script|style|kbd|samp)\b[^>]*>.*?</(?P=tag)\s*>)
  | (?P<dmath>\$\$.+?\$\$)
  | (?P<imath>\$[^$\n]+\$)
  | (?P<link>!?\[(?:[^\[\]\n]|\[[^\]\n]*\])*\]\([^)\n]*\)(?:\{[^}\n]*\})?)
  | (?P<reflink>!?\[[^\]\n]*\]\[[^\]\n]*\])
  | (?P<shortcode>\{\{<.*?>\}\})
  | (?P<tagonly><[^<>\n]+>)
""", re.X | re.S | re.M)

_ITEM = r'\d{2}(?:_[A-Za-z0-9]+)*'
_SEP = r'(?:[ \t]*[,/–—-][ \t]*(?:(?:and|or)[ \t]+)?|[ \t]*,?[ \t]+(?:and|or|to|through)[ \t]+)'
# "chapter 29", "Chapter 29", "chapters 13–17", "chapters 14 and 16", "chapters 01, 02, 13 and 29",
# "chapter 13_mr2", "(chapter 12_clip)": the word, then one or more chapter names
_MENTION = re.compile(rf'(?<![\w-])(?P<word>[Cc]hapters?)(?P<gap>[ \t\u00a0]+|[ \t]*\n[ \t]*)'
                      rf'(?P<items>{_ITEM}(?![\w.]\w|\w)(?:{_SEP}{_ITEM}(?![\w.]\w|\w))*)')
_ITEM_RE = re.compile(rf'(?P<item>{_ITEM})(?![\w.]\w|\w)')


@functools.lru_cache(None)
def _chapters_in(nbs: str) -> tuple:
    "((number, stem, page, title), ...) of the numbered chapter notebooks in the folder `nbs`."
    out = []
    for p in sorted(Path(nbs).glob('[0-9][0-9]_*.ipynb')):
        title = ''
        try:
            cells = json.loads(p.read_text(encoding='utf-8')).get('cells', [])
            md = next((c for c in cells if c.get('cell_type') == 'markdown'), None)
            first = (''.join(md['source']) if md else '').lstrip().splitlines()[:1]
            if first and first[0].startswith('# '): title = first[0][2:].strip()
        except (OSError, ValueError): pass
        out.append((p.stem[:2], p.stem, page_name(p.stem) + '.html', title))
    return tuple(out)


def chapter_table(nbs=None) -> dict:
    """Chapter name -> (page, link title): every numbered notebook of nbs/ by its number ('23') and its stem
    ('29_premise'). A number that names no notebook is not a chapter and is never linked."""
    if nbs is None:
        from nbdev.config import get_config
        nbs = get_config().nbs_path
    d = {}
    for num, stem, page, title in _chapters_in(str(Path(nbs).resolve())):
        tip = f'{num} · {title.replace("`", "")}' if title else num
        d[num] = d[stem] = (page, tip)
    return d


def _unprotected(md: str):
    "Yield (text, protected) pieces of `md` in order."
    pos = 0
    for m in _PROTECTED.finditer(md):
        if m.start() > pos: yield md[pos:m.start()], False
        yield m.group(0), True
        pos = m.end()
    if pos < len(md): yield md[pos:], False


def _md_link(text: str, page: str, tip: str | None) -> str:
    if not tip: return f'[{text}]({page})'
    tip = tip.replace('\\', '').replace('"', "'")
    return f'[{text}]({page} "{tip}")'


def link_chapters(md: str, chapters: dict, here: str | None = None, titles: bool = True) -> tuple[str, int]:
    """Turn prose chapter mentions of Markdown `md` into links to the chapter pages; returns (text, links made).

    "chapter 29" / "Chapter 29" / "chapter 13_mr2" become one link each ("[chapter 29](premise.html ...)");
    in a list ("chapters 13–17", "chapters 14 and 16") each number is a link. Only names in `chapters`
    (`chapter_table`) are linked, never text inside code, math, links, HTML or headings, and never the page
    `here` (the page being processed) itself. "chapter 10_foo" (a number whose name is not that chapter's) is
    left as it is. `titles=False`: links without a tooltip (for text inside a quoted YAML string)."""
    if not md or 'hapter' not in md: return md, 0
    n = 0
    def ok(item):
        hit = chapters.get(item)
        return (hit if titles else (hit[0], None)) if hit and hit[0] != here else None
    def one(m):
        nonlocal n
        items = list(_ITEM_RE.finditer(m.group('items')))
        if len(items) == 1:
            hit = ok(items[0].group('item'))
            if not hit: return m.group(0)
            n += 1
            return _md_link(m.group(0), *hit)
        out, pos, s = [m.group('word') + m.group('gap')], 0, m.group('items')
        for it in items:
            out.append(s[pos:it.start()])
            hit = ok(it.group('item'))
            if hit: n += 1; out.append(_md_link(it.group('item'), *hit))
            else: out.append(it.group('item'))
            pos = it.end()
        out.append(s[pos:])
        return ''.join(out)
    res = ''.join(t if prot else _MENTION.sub(one, t) for t, prot in _unprotected(md))
    return res, n


# a Markdown link around a (backticked) name, as nbdev's add_links writes it
_CODE_LINK = re.compile(r'\[(`[^`\n]+`)\]\([^)\s]+\)')
_FENCE_RE = re.compile(r'^([ \t]*)(`{3,}|~{3,})[^\n]*\n.*?^\1?[ \t]*\2[ \t]*$', re.S | re.M)


def strip_code_links(md: str) -> tuple[str, int]:
    """Remove Markdown links from fenced code blocks of `md` (they show as raw "[`x`](https://...)" text in a
    signature); the backticked name stays as written. Returns (text, links removed)."""
    n = 0
    def fence(m):
        nonlocal n
        s, k = _CODE_LINK.subn(r'\1', m.group(0))
        n += k
        return s
    return _FENCE_RE.sub(fence, md), n


_LNONE = re.compile(r'\((?P<url>[^()\s]*?/blob/[^()\s]*?/(?P<py>[^()\s/]+\.py))#LNone\)')


def source_line(sym, fullname: str) -> int | None:
    "Line of the definition of `sym` (qualified name `fullname`) in its module file, or None."
    import inspect
    mod = getattr(sym, '__module__', None) or fullname.rpartition('.')[0]
    try:
        from nbdev.doclinks import _get_exps
        modfile = getattr(importlib.import_module(mod), '__file__', None)
        if modfile:
            rel = f'{LIB}/{Path(modfile).name}' if Path(modfile).parent.name == LIB else None
            name = fullname[len(mod) + 1:] if fullname.startswith(mod + '.') else fullname
            line = _get_exps(rel).get(name) if rel else None
            if line: return line
    except Exception: pass
    try:
        obj = inspect.unwrap(sym)
        return inspect.getsourcelines(obj)[1] or None
    except (TypeError, OSError): return None


def fix_source_link(md: str, line: int | None) -> tuple[str, int]:
    """nbdev 2.4.14 with fastcore >= 1.8 writes every source link as `...py#LNone`: show_doc passes the qualified
    name (`margin_notes.data.find_data`) to a line lookup keyed by the bare name. Put the real line in (or link
    the file when the line is unknown). Returns (text, links given a line number)."""
    if '#LNone' not in md: return md, 0
    if line: return _LNONE.sub(lambda m: f"({m.group('url')}#L{line})", md), 1
    return _LNONE.sub(lambda m: f"({m.group('url')})", md), 0
