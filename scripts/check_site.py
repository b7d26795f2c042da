#!/usr/bin/env python
"""Check the real rendered site (`make check-site`): Quarto's _docs/ in headless Chromium.

1. unless --no-build: build the site (scripts/build_docs.py, what `make docs` runs) into _docs/;
2. serve _docs/ on 127.0.0.1; the server substitutes a local MathJax (Debian libjs-mathjax) for the CDN
   one and appends a probe script to every page (the files in _docs/ are not changed); the browser can
   reach nothing else (every other host resolves to nothing);
3. open every page in headless Chromium (`--dump-dom`, `--virtual-time-budget`); the probe waits for
   MathJax, measures the page and writes its findings as JSON into the DOM, which is dumped;
4. per page, assert:
   - the page exists for every chapter notebook, and loads;
   - figures: every image output committed in the chapter's notebook is an <img> in a cell output of the
     page, and the browser decoded it (naturalWidth > 0);
   - tables: every table output committed in the notebook is a <table> in a cell output of the page, and
     prose that announces a table / figure ("the table below", "the figure shows", ...) is followed,
     within the next few cells, by one;
   - links: every link to a page of the site (relative, or absolute under the site's URL) points to an
     existing page, and its #anchor to an existing id on that page;
   - width: no cell output and no table is wider than the text column (overflows it, or scrolls);
   - no traceback, no error or stderr output, no smoke-run marker in any output;
   - MathJax typeset every formula: the page has typeset math wherever its source has math, and no raw
     \\( \\[ $$ is left in the text, and no MathJax error.
   - the reader checks (READER_CHECKS below, issue 25: the defects a reader met that the checks above missed),
     each reported as `[id] page cell-or-element: defect`:
       md-code          a Markdown cell that is code (first line `#|`, or most lines Python statements)
       list-para        a list right after a paragraph line (Pandoc needs a blank line): cells and Markdown outputs
       img-scale        a cell-output image shown below 85 % of its natural width
       img-font         its smallest text under 8 px: smallest font (margin_notes/style.py's BOOK_RC, or a smaller
                        explicit size in the cell or in a library function it calls) x PNG dpi / 72 x shown / natural
       caption, alt     a figure or cell-output table without a numbered Quarto caption ("Figure N" / "Table N" in
                        the .quarto-float's figcaption); a figure without alt text (#| fig-alt)
       chapter-link     "chapter NN" / "chapters NN" / "Chapter NN_name" (NN a chapter of the book, not the page's
                        own) outside <a>, <code>, <pre>, math and headings
       source-line      an nbdev "source" link without #L<n>;  sig-link: `](http` or [`name`]( in a code block
                        outside code cells (show_doc signatures);  math-wide: display math > 2 px past <main>
       output-repr      /tmp/, tmpXXXXXXXX folders, np.float64(...), array(..., dtype=...), floats with 12+
                        significant digits, in what a cell output shows
       printed-table    a Markdown table printed as text (stdout / text/plain) instead of displayed as a table
       harness-words    smoke, nbdev_test, hidden checks, slow cell, #| slow, load average, "an earlier version of
                        this chapter", the papers called "seed(s)" (not random seeds), in Markdown outside code
                        (nbdev_test and #| slow also inside code spans); not on contributing.html
       title            sidebar label (without "NN · ") against the page's `# Title` and the index's names for it;
                        equal up to case, emphasis, a leading article and a trailing "(plan)"/"(recipe)", or the
                        page title is the label plus a subtitle after ": "; a marker on the page needs one in the sidebar
       library-default  prose stating MR2Loss's default variant or DBMLoss's default base / scale other than the
                        library's (read with inspect.signature), by a narrow set of patterns
     Notebook-side checks (md-code, list-para, output-repr, printed-table, harness-words, title, library-default) also run
     without a build or a browser: `--prose-only`.
5. --shots NAME ... saves screenshots of those pages in screenshots/.

Prints one line per page and finally `check-site: N passed, N failed`; exits 1 on any failure.
Needs: chromium, libjs-mathjax (Debian), Quarto (for the build).

Usage: python scripts/check_site.py [--no-build | --prose-only] [--only PAGE ...] [--shots PAGE ...] [--budget MS] [--jobs N]
"""
from __future__ import annotations
import argparse, configparser, functools, http.server, json, os, re, shutil, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
DOCS = ROOT / '_docs'
SHOTS = ROOT / 'screenshots'

# Chapters listed in _quarto.yml whose notebooks are not written yet (a listed chapter missing from nbs/
# is an error unless it is named here) and notebooks deliberately left out of the sidebar.
PLANNED: set[str] = set()
HIDDEN: set[str] = set()

MATHJAX_DIR = Path('/usr/share/javascript/mathjax')       # Debian libjs-mathjax (2.7.x)
MATHJAX_LOCAL = '/__mathjax__/MathJax.js?config=TeX-AMS_CHTML-full'
# the CDN MathJax of a default build, or the file:// one of `MATHJAX=local make docs` (a page served over HTTP may not
# load file:// scripts): both are replaced by the served local copy
CDN_MATHJAX_RE = re.compile(r'<script src="(?:https://cdn\.jsdelivr\.net/npm/mathjax@|file:///usr/share/javascript/mathjax/)[^"]*"[^>]*></script>')
CHROMIUM_CANDIDATES = ['chromium', 'chromium-browser', 'google-chrome']
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--no-first-run', '--hide-scrollbars', '--mute-audio',
                  '--disable-extensions', '--window-size=1400,1000',
                  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']
# what a smoke run / stand-in / test scaffold prints about itself (scripts/execute_book.py refuses the same)
SMOKE_RE = re.compile(r'\bsmoke[ -]?(run|mode|test|config)|\bSMOKE\b|\bstand-in\b|\bfake run', re.I)
# prose that announces a table or a figure right after it
ANNOUNCE_RE = re.compile(r'\b(?:the|this) (table|figure|plot)s? (?:below|shows|that follows)\b'
                         r'|\b(?:the )?following (table|figure|plot)\b|\b(table|figure|plot) below\b', re.I)
ANNOUNCE_WINDOW = 4   # cells after the announcing prose


# ---------------------------------------------------------------- chapter list (shared with the tests)
def quarto_config(path: Path = ROOT / '_quarto.yml') -> dict:
    import yaml
    return yaml.safe_load(path.read_text())

def _walk(contents, part=None):
    for item in contents or []:
        if isinstance(item, str): yield part, item, None
        elif 'section' in item: yield from _walk(item.get('contents'), item['section'])
        elif 'href' in item: yield part, item['href'], item.get('text')

def sidebar_entries(cfg: dict | None = None) -> list[tuple[str | None, str, str | None]]:
    "(part, href, text) for every sidebar entry of _quarto.yml, in order."
    cfg = cfg or quarto_config()
    return list(_walk(cfg['website']['sidebar']['contents']))

def listed_chapters(cfg: dict | None = None) -> list[str]:
    "Notebook stems listed in the sidebar, in order."
    return [Path(h).stem for _, h, _ in sidebar_entries(cfg) if h.endswith('.ipynb')]

def page_name(stem: str) -> str:
    "nbdev names pages without the number prefix: 13_mr2 -> mr2(.html)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', stem.lower())

def chapter_list_problems(cfg: dict | None = None, nbs: Path = NBS) -> list[str]:
    "Listed-but-missing chapters (unless PLANNED), unlisted notebooks (unless HIDDEN), duplicates, clashes."
    listed = listed_chapters(cfg)
    present = {p.stem for p in nbs.glob('*.ipynb')}
    probs = [f'{n}.ipynb is listed in _quarto.yml but missing from nbs/ (and not in PLANNED)'
             for n in listed if n not in present and n not in PLANNED]
    probs += [f'nbs/{n}.ipynb is not listed in the _quarto.yml sidebar (and not in HIDDEN)'
              for n in sorted(present - set(listed) - HIDDEN)]
    probs += [f'{n} is listed twice' for n in sorted({n for n in listed if listed.count(n) > 1})]
    pages = {}
    for n in sorted(set(listed) | present):
        pages.setdefault(page_name(n), []).append(n)
    probs += [f'{v} all render to {k}.html (nbdev sets output-file from the name without its number prefix: '
              f'rename one of them)' for k, v in pages.items() if len(v) > 1]
    return probs

def title_cell_problems(nb_path: Path) -> list[str]:
    """nbdev reads a page's title from the first markdown cell's `# ` line and its description from the first
    `> ` line only: a description wrapped over several `> ` lines is cut after its first line on the page."""
    cells = json.loads(nb_path.read_text()).get('cells', [])
    md = next((c for c in cells if c.get('cell_type') == 'markdown'), None)
    if md is None: return [f'{nb_path.name}: no markdown cell, so the page has no title']
    lines = _text(md.get('source', '')).splitlines()
    probs = [] if lines and lines[0].startswith('# ') else [f'{nb_path.name}: the first markdown cell must start with "# Title"']
    quote = [i for i, l in enumerate(lines) if l.startswith('>')]
    if len(quote) > 1 and quote[1] == quote[0] + 1:
        probs.append(f'{nb_path.name}: the description spans {len(quote)} "> " lines; nbdev keeps only the first, '
                     'so the page would show it cut off: write it on one line')
    return probs

def title_problems(nbs: Path = NBS) -> list[str]:
    "`title_cell_problems` of every notebook in `nbs`."
    return [p for nb in sorted(nbs.glob('*.ipynb')) for p in title_cell_problems(nb)]

def chapters(only=None) -> list[Path]:
    present = {p.stem: p for p in NBS.glob('*.ipynb')}
    order = [n for n in listed_chapters() if n in present] + sorted(set(present) - set(listed_chapters()))
    if only:
        want = {page_name(Path(o).stem.removesuffix('.html')) for o in only}
        order = [n for n in order if page_name(n) in want]
        if not order: sys.exit(f'--only: no chapter matches {only}')
    return [present[n] for n in order]


# ---------------------------------------------------------------- what the notebook says the page must show
def _text(v) -> str: return ''.join(v) if isinstance(v, list) else str(v)

def _is_table(o) -> bool:
    d = o.get('data', {})
    if '<table' in _text(d.get('text/html', '')): return True
    return bool(re.search(r'^\s*\|?\s*:?-{3,}:?\s*\|', _text(d.get('text/markdown', '')), re.M))

def _is_image(o) -> bool:
    return any(k.startswith('image/') for k in o.get('data', {}))

SKIP_RE = re.compile(r'^\s*#\|\s*(slow|gpu|eval:\s*false)\b', re.M)

def shows_something(src: str) -> bool:
    "Does this code cell, run, necessarily display something? (a top-level or loop-level print/display/figure,"
    "or a bare expression as its last statement)"
    import ast
    code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
    try: tree = ast.parse(code)
    except SyntaxError: return False
    def calls(stmts):
        for st in stmts:
            if isinstance(st, (ast.For, ast.While, ast.With)): yield from calls(st.body)
            elif isinstance(st, ast.Expr) and isinstance(st.value, ast.Call):
                f = st.value.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''
                yield name
    if any(n in ('print', 'display', 'show_doc') for n in calls(tree.body)): return True
    # a figure made at top level (not inside a function or class the cell only defines)
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    top = '\n'.join(ast.get_source_segment(code, st) or '' for st in tree.body if not isinstance(st, defs))
    if re.search(r'plt\.(subplots|figure)\(', top): return True
    last = tree.body[-1] if tree.body else None
    return isinstance(last, ast.Expr) and isinstance(last.value, (ast.Name, ast.Attribute, ast.Subscript, ast.BinOp, ast.Tuple))

def expectations(nb_path: Path) -> dict:
    "Counts of image and table outputs committed in the notebook, silent display cells, orphan announcements."
    cells = json.loads(nb_path.read_text())['cells']
    imgs = tables = 0
    silent = []
    shows = []   # per cell: (has_table, has_figure)
    for c in cells:
        outs = c.get('outputs', []) if c['cell_type'] == 'code' else []
        ni, nt = sum(map(_is_image, outs)), sum(map(_is_table, outs))
        imgs += ni; tables += nt
        src = _text(c.get('source', ''))
        if c['cell_type'] == 'code' and not outs and not SKIP_RE.search(src) and shows_something(src):
            silent.append(len(shows))
        md_table = c['cell_type'] == 'markdown' and re.search(r'^\s*\|.*\|\s*$\n^\s*\|?\s*:?-{3,}', src, re.M)
        md_img = c['cell_type'] == 'markdown' and re.search(r'!\[[^\]]*\]\(', src)
        shows.append((bool(nt or md_table), bool(ni or md_img)))
    orphans = []
    for i, c in enumerate(cells):
        if c['cell_type'] != 'markdown': continue
        for m in ANNOUNCE_RE.finditer(_text(c['source'])):
            kind = next(g for g in m.groups() if g).lower()
            want = 0 if kind == 'table' else 1
            if not any(s[want] for s in shows[i + 1:i + 1 + ANNOUNCE_WINDOW]):
                orphans.append(f'prose in cell {i} announces a {kind} ({m.group(0)!r}) but none follows within '
                               f'{ANNOUNCE_WINDOW} cells')
    if silent:
        orphans.append(f'{len(silent)} code cells that display something have no committed output (cells '
                       f'{", ".join(map(str, silent[:8]))}{", ..." if len(silent) > 8 else ""}): run `make outputs`')
    return {'images': imgs, 'tables': tables, 'orphans': orphans}


# ---------------------------------------------------------------- serving and browsing
PROBE = r"""
<script>
(function(){
  function probe(){
    var out = {}, main = document.querySelector('main') || document.body;
    var col = main.getBoundingClientRect();
    out.column = Math.round(col.width);
    var wide = [];
    document.querySelectorAll('main .cell-output, main .cell-output-display, main table').forEach(function(el){
      var r = el.getBoundingClientRect();
      if (r.width === 0) return;
      var over = Math.round(r.right - col.right), scroll = el.scrollWidth - el.clientWidth;
      var inner = 0;
      el.querySelectorAll('pre, table').forEach(function(p){ inner = Math.max(inner, p.scrollWidth - p.clientWidth,
                                                             Math.round(p.getBoundingClientRect().right - col.right)); });
      var worst = Math.max(over, scroll, inner);
      if (worst > 2) wide.push({tag: el.tagName.toLowerCase() + '.' + (el.className || '').toString().split(' ')[0],
                                px: worst, text: (el.innerText || '').slice(0, 60)});
    });
    out.wide = wide;
    var imgs = [];
    document.querySelectorAll('main .cell-output-display img, main .cell-output img').forEach(function(im){
      imgs.push({ok: im.complete && im.naturalWidth > 0, src: (im.getAttribute('src') || '').slice(0, 60)});
    });
    out.imgs = imgs;
    out.tables = document.querySelectorAll('main .cell-output-display table, main .cell-output table').length;
    out.stderr = document.querySelectorAll('main .cell-output-stderr').length;
    out.errors = document.querySelectorAll('main .cell-output-error').length;
    var outText = [];
    document.querySelectorAll('main .cell-output, main .cell-output-display').forEach(function(el){ outText.push(el.innerText || ''); });
    out.outputText = outText.join('\n').slice(0, 200000);
    out.mathSource = document.querySelectorAll('main .math').length;
    out.mathTypeset = document.querySelectorAll('main .MathJax_CHTML, main mjx-container, main .MathJax_SVG, main .MathJax').length;
    out.mathErrors = document.querySelectorAll('main .mjx-merror, main merror, main mjx-merror').length
                   + ((main.innerText || '').indexOf('Math Processing Error') >= 0 ? 1 : 0);
    var raw = [], walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, null);
    while (walker.nextNode()) {
      var n = walker.currentNode, p = n.parentElement;
      if (!p || p.closest('pre, code, script, style, textarea, .sourceCode')) continue;
      if (/\\\(|\\\[|\$\$/.test(n.nodeValue)) raw.push(n.nodeValue.trim().slice(0, 60));
    }
    out.rawMath = raw;
    var ids = []; document.querySelectorAll('[id]').forEach(function(e){ ids.push(e.id); });
    out.ids = ids;
    var links = []; document.querySelectorAll('a[href]').forEach(function(a){ links.push(a.getAttribute('href')); });
    out.links = links;
    // reader checks (scripts/check_site.py READER_CHECKS): raw measurements, judged in Python
    var rd = {imgs: [], tables: [], chapters: [], sources: [], sigLinks: [], mathWide: []};
    function cellOf(el){
      var c = el.closest('.cell'); if (c && c.id) return c.id;
      var f = el.closest('.quarto-float[id], [id^="fig-"], [id^="tbl-"]'); return f ? f.id : '';
    }
    function near(el){
      var c = el.closest('.cell'); if (c && c.id) return 'cell ' + c.id;
      if (el.closest('header, #title-block-header')) return 'page description';
      var s = el.closest('section[id]'); return s ? '#' + s.id : '';
    }
    function capOf(el){
      var cap = '';
      for (var f = el.closest('.quarto-float'); f; f = f.parentElement ? f.parentElement.closest('.quarto-float') : null)
        f.querySelectorAll('figcaption').forEach(function(fc){ cap += ' ' + fc.textContent; });
      return cap.replace(/\s+/g, ' ').trim();
    }
    main.querySelectorAll('.cell-output-display img, .cell-output img').forEach(function(im){
      rd.imgs.push({src: im.getAttribute('src') || '', nat: im.naturalWidth, shown: im.getBoundingClientRect().width,
                    cell: cellOf(im), alt: im.getAttribute('alt'), caption: capOf(im)});
    });
    main.querySelectorAll('.cell-output-display table, .cell-output table').forEach(function(t){
      if (t.parentElement.closest('table')) return;
      var row = t.querySelector('tr'), head = [];
      if (row) row.querySelectorAll('th, td').forEach(function(c){ head.push((c.textContent || '').trim()); });
      rd.tables.push({cell: cellOf(t), caption: capOf(t), head: head.join(' | ')});
    });
    var skip = 'a, code, pre, h1, h2, h3, h4, h5, h6, script, style, .sourceCode, .math, .MathJax_CHTML, .MathJax, mjx-container, #__site_check__';
    var cw = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, null), chre = /\b[Cc]hapters?\s+(\d{2})(?:_\w+)?\b/g, cm;
    while (cw.nextNode()) {
      var tn = cw.currentNode, pe = tn.parentElement;
      if (!pe || pe.closest(skip)) continue;
      chre.lastIndex = 0;
      while ((cm = chre.exec(tn.nodeValue)) !== null) rd.chapters.push({nn: cm[1], text: cm[0], where: near(pe)});
    }
    document.querySelectorAll('a[href]').forEach(function(a){
      if ((a.textContent || '').trim() === 'source') rd.sources.push(a.getAttribute('href'));
    });
    main.querySelectorAll('pre').forEach(function(p){
      if (p.closest('.cell-code, .cell-output-stdout, .cell-output-stderr')) return;
      var t = p.textContent || '', m = /\]\(https?:[^)\s]*\)?|\[`[^`\]]+`\]\([^)\s]*\)?/.exec(t);
      if (m) rd.sigLinks.push({text: t.slice(Math.max(0, m.index - 30), m.index + Math.min(m[0].length, 50)), where: near(p)});
    });
    main.querySelectorAll('.MJXc-display, .MathJax_Display, mjx-container[display="true"]').forEach(function(el){
      var inner = el.querySelector('.mjx-math, mjx-math') || el, right = inner.getBoundingClientRect().right;
      var px = Math.max(Math.round(right - col.right), el.scrollWidth - el.clientWidth);
      var host = el.closest('.math'), s = host && host.querySelector('script');
      if (px > 0) rd.mathWide.push({px: px, text: ((s ? s.textContent : el.textContent) || '').trim().slice(0, 60), where: near(el)});
    });
    out.reader = rd;
    var pre = document.createElement('pre'); pre.id = '__site_check__';
    pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
  }
  function start(){
    if (window.MathJax && window.MathJax.Hub && window.MathJax.Hub.Queue) window.MathJax.Hub.Queue(probe);
    else if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) window.MathJax.startup.promise.then(probe);
    else probe();
  }
  window.addEventListener('load', function(){
    if (location.hash === '#__results__') {
      var el = document.querySelector('main .cell-output-display img, main .cell-output-display table');
      // show the first result at the top: hide everything before it inside <main>
      for (var n = el; n && n.tagName !== 'MAIN'; n = n.parentElement)
        for (var sib = n.previousElementSibling; sib; sib = sib.previousElementSibling) sib.style.display = 'none';
    }
    setTimeout(start, 50);
  });
})();
</script>
"""


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        if path.startswith('/__mathjax__/'):
            f = MATHJAX_DIR / path[len('/__mathjax__/'):]
            return self._send(f.read_bytes(), self.guess_type(str(f))) if f.is_file() else self.send_error(404)
        if path.endswith('/'): path += 'index.html'
        f = Path(self.directory) / path.lstrip('/')
        if f.suffix == '.html' and f.is_file():
            # unknown macros and TeX errors become merror elements (not red text), so that the probe sees them
            cfg = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({TeX: {noUndefined: {disabled: true}, '
                   'noErrors: {disabled: true}}});</script>')
            html = CDN_MATHJAX_RE.sub(lambda m: f'{cfg}<script src="{MATHJAX_LOCAL}"></script>', f.read_text())
            html = html.replace('</body>', PROBE + '</body>')
            return self._send(html.encode(), 'text/html; charset=utf-8')
        return super().do_GET()

    def _send(self, body: bytes, ctype: str):
        self.send_response(200); self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)


def serve(docs: Path):
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(docs)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}'


def chromium() -> str:
    for c in CHROMIUM_CANDIDATES:
        if shutil.which(c): return shutil.which(c)
    sys.exit('check_site: no chromium on PATH (Debian: apt-get install chromium)')


def browse(url: str, budget_ms: int, timeout: int, shot: Path | None = None) -> tuple[dict | None, str]:
    "Load `url`, return (probe result, error)."
    with_dir = lambda: ['--user-data-dir=' + tempfile_dir()]
    cmd = [chromium(), *CHROMIUM_FLAGS, *with_dir(), f'--virtual-time-budget={budget_ms}', '--dump-dom', url]
    try: r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired: return None, f'chromium timed out after {timeout} s'
    m = re.search(r'<pre id="__site_check__">(.*?)</pre>', r.stdout, re.S)
    if shot is not None:   # the top of the page, and its first figure or table (<name>-results.png)
        shot.parent.mkdir(parents=True, exist_ok=True)
        for path, u in ((shot, url), (shot.with_name(shot.stem + '-results.png'), url + '#__results__')):
            subprocess.run([chromium(), *CHROMIUM_FLAGS, *with_dir(), '--window-size=1400,2000',
                            f'--virtual-time-budget={budget_ms}', f'--screenshot={path}', u],
                           capture_output=True, timeout=timeout)
    if not m: return None, f'no probe result (chromium rc {r.returncode}: {r.stderr.strip()[-200:]})'
    from html import unescape
    return json.loads(unescape(m.group(1))), ''


_tmpdirs: list = []
def tempfile_dir() -> str:
    import tempfile
    d = tempfile.TemporaryDirectory(prefix='check-site-chromium-'); _tmpdirs.append(d); return d.name


# ---------------------------------------------------------------- the checks
class _Ids(HTMLParser):
    def __init__(self): super().__init__(); self.ids = set()
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('id', 'name') and v: self.ids.add(v)

@functools.lru_cache(maxsize=None)
def static_ids(page: Path) -> frozenset:
    p = _Ids(); p.feed(page.read_text()); return frozenset(p.ids)

def site_url() -> str:
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini'); d = cp['DEFAULT']
    return d.get('doc_host', '').rstrip('/') + d.get('doc_baseurl', '').rstrip('/') + '/'

class _Hrefs(HTMLParser):
    def __init__(self): super().__init__(); self.hrefs = []
    def handle_starttag(self, tag, attrs):
        if tag == 'a': self.hrefs += [v for k, v in attrs if k == 'href' and v]

def static_links(page: Path) -> list[str]:
    p = _Hrefs(); p.feed(page.read_text()); return p.hrefs

def link_problems(page: Path, links: list[str], docs: Path, live_ids: dict[str, set], served: str = '') -> list[str]:
    "Broken links to pages of the site (relative, under the site URL, or under the check's server URL)."
    probs, bases = [], [b for b in (site_url(), served.rstrip('/') + '/' if served else '') if b]
    for href in sorted(set(links)):
        for base in bases:
            if href.startswith(base): href = href[len(base):] or 'index.html'
        u = urlsplit(href)
        if u.scheme or u.netloc or href.startswith(('mailto:', 'javascript:')) or href in ('#', ''): continue
        target = page if not u.path else (page.parent / unquote(u.path)).resolve()
        if target.is_dir(): target = target / 'index.html'
        if not target.exists():
            probs.append(f'broken link {href!r}: no {target.relative_to(docs.resolve()) if target.is_relative_to(docs.resolve()) else target}')
            continue
        frag = unquote(u.fragment)
        if frag and target.suffix == '.html':
            ids = live_ids.get(target.name) or static_ids(target)
            if frag not in ids: probs.append(f'broken anchor {href!r}: {target.name} has no id {frag!r}')
    return list(dict.fromkeys(probs))


def page_problems(exp: dict, probe: dict) -> list[str]:
    probs = list(exp['orphans'])
    imgs = probe['imgs']
    bad = [i['src'] for i in imgs if not i['ok']]
    if len(imgs) < exp['images']:
        probs.append(f'{exp["images"]} image outputs in the notebook, {len(imgs)} <img> in the page\'s cell outputs')
    if bad: probs.append(f'{len(bad)} images did not decode: {bad[:3]}')
    if probe['tables'] < exp['tables']:
        probs.append(f'{exp["tables"]} table outputs in the notebook, {probe["tables"]} <table> in the page\'s cell outputs')
    for w in probe['wide'][:5]:
        probs.append(f'{w["tag"]} is {w["px"]} px wider than the text column ({probe["column"]} px): {w["text"]!r}')
    if probe['stderr']: probs.append(f'{probe["stderr"]} stderr outputs')
    if probe['errors']: probs.append(f'{probe["errors"]} error outputs')
    if 'Traceback (most recent call last)' in probe['outputText'] or re.search(r'^\w*Error: ', probe['outputText'], re.M):
        probs.append('a cell output shows a traceback / error')
    m = SMOKE_RE.search(probe['outputText'])
    if m: probs.append(f'a cell output shows a smoke-run marker: {m.group(0)!r}')
    if probe['mathSource'] and not probe['mathTypeset']:
        probs.append(f'MathJax typeset nothing ({probe["mathSource"]} formulas in the source)')
    if probe['rawMath']: probs.append(f'raw TeX left after MathJax: {probe["rawMath"][:3]}')
    if probe['mathErrors']: probs.append(f'{probe["mathErrors"]} MathJax errors')
    return probs


# ---------------------------------------------------------------- reader checks (issue 25: "reads like a reader")
# Each finding has a check id; `READER_CHECKS` says what each one catches. Notebook-side checks read the committed
# notebooks (pure Python, no build, `--prose-only`); page-side checks read what the probe measured in Chromium.
READER_CHECKS = {
    'md-code':        'a Markdown cell whose text is code (first line `#|`, or most lines Python statements)',
    'list-para':      'a Markdown list right after a paragraph line with no blank line: Pandoc renders it as text',
    'img-scale':      f'a cell-output image shown below {0.85:.0%} of its natural width',
    'img-font':       "a cell-output image whose smallest text renders under 8 px (style's smallest font, "
                      "or a smaller explicit fontsize in the cell, x PNG dpi / 72 x shown / natural width)",
    'caption':        'a figure or results table in a cell output without a numbered Quarto caption (Figure N / Table N)',
    'alt':            'a figure in a cell output without alt text (#| fig-alt)',
    'chapter-link':   'a chapter mention in prose ("chapter NN", "Chapter NN_name") that is not a link',
    'source-line':    'an nbdev "source" link without a line number (#LNone, or no #L<n>)',
    'sig-link':       'raw Markdown link syntax inside a code block outside code cells (show_doc signatures)',
    'math-wide':      'display math wider than the text column (by more than 2 px)',
    'output-repr':    'a temporary path or a raw numpy / long float repr in a cell output',
    'printed-table':  'a Markdown table printed as text (stdout or text/plain) instead of displayed as a table',
    'harness-words':  'test-harness words or history in chapter prose (smoke, nbdev_test, hidden checks, seed paper...)',
    'title':          'a chapter title that differs between sidebar, page and the index',
    'library-default': "prose that states a library default (MR2Loss's variant, DBMLoss's base/scale) the library does not have",
}
IMG_MIN_SCALE = 0.85       # the review measured 0.44-0.69 on the pages a reader could not read
IMG_MIN_TEXT_PX = 8.0
MATH_SLACK_PX = 2
CONTRIBUTING = 'contributing'   # the page where the test harness is explained (harness words allowed there)


class Finding(tuple):
    "(check, page, where, message); str() is the one-line report."
    def __new__(cls, check, page, where, msg): return super().__new__(cls, (check, page, where, msg))
    check = property(lambda s: s[0]); page = property(lambda s: s[1])
    where = property(lambda s: s[2]); msg = property(lambda s: s[3])
    def __str__(self): return f'[{self[0]}] {self[1]} {self[2]}: {self[3]}'


def _cells(nb) -> list[dict]:
    if isinstance(nb, (str, Path)): nb = json.loads(Path(nb).read_text())
    return nb['cells'] if isinstance(nb, dict) else nb

def _cid(cell, i) -> str:
    return f'cell {cell.get("id") or i}'

FENCE_RE = re.compile(r'^(\s*)(```|~~~).*?^\1\2\s*$', re.M | re.S)
MATHBLOCK_RE = re.compile(r'\$\$.*?\$\$', re.S)
CODESPAN_RE = re.compile(r'(`+)(?!`).+?(?<!`)\1', re.S)
HTMLCOMMENT_RE = re.compile(r'<!--.*?-->', re.S)

def _blank_out(text: str, rx) -> str:
    "Replace each match by as many blank lines as it spans (so line numbers and list structure survive)."
    return rx.sub(lambda m: '\n' * m.group(0).count('\n'), text)

def _mask_lines(text: str, rx) -> str:
    "Replace each line of each match by 'x' (display math stays part of its paragraph or list item)."
    return rx.sub(lambda m: re.sub(r'[^\n]+', 'x', m.group(0)), text)

def _prose(text: str, spans: bool = True) -> str:
    "Markdown without fenced code blocks, display math, HTML comments, (optionally) code spans and link targets."
    t = _blank_out(_blank_out(_blank_out(text, FENCE_RE), MATHBLOCK_RE), HTMLCOMMENT_RE)
    if spans: t = CODESPAN_RE.sub(' ', t)
    return re.sub(r'\]\([^)\s]*\)', ']', t)

def _hidden_output(cell) -> bool:
    "Quarto/nbdev show nothing of this cell's outputs (#| hide, #| include: false, #| output: false)."
    src = _text(cell.get('source', ''))
    return bool(re.search(r'^\s*#\|\s*(?:hide\s*$|include:\s*false|output:\s*false)', src, re.M | re.I))

def _markdown_texts(cells):
    "(where, markdown text) of every Markdown cell and every text/markdown output (what Quarto renders as prose)."
    for i, c in enumerate(cells):
        if c.get('cell_type') == 'markdown': yield _cid(c, i), _text(c.get('source', ''))
        elif c.get('cell_type') == 'code' and not _hidden_output(c):
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md is not None and 'text/html' not in o.get('data', {}):
                    yield _cid(c, i) + ' (Markdown output)', _text(md)


# -- 1. md-code
_CODE_LINE_RE = re.compile(
    r'^\s*(?:import\s+[\w.]+(?:\s+as\s+\w+)?\s*(?:,\s*[\w.]+\s*)*$|from\s+[\w.]+\s+import\s+[\w*(]'
    r'|(?:for|while|if|elif|with|def|class|try|except|else|async\s+def)\b[^\n]*:\s*(?:#.*)?$'
    r'|(?:return|raise|assert|yield)\b\s*\S*[^.\s]\s*$|@\w[\w.]*(?:\(.*\))?\s*$'
    r"|[A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:\s*,\s*[A-Za-z_][\w.]*)*\s*(?:[-+*/]?=)\s*[^=\s].*[^.:;!?\s]\s*$"
    r'|[A-Za-z_][\w.]*\(.*\)\s*(?:#.*)?$)')

def _code_like(line: str) -> bool:
    s = line.strip()
    if not s or s.startswith(('#', '>', '|', '$', '<')) or re.match(r'^(?:[-*+]|\d+[.)])\s', s): return False
    if not _CODE_LINE_RE.match(s): return False
    if re.search(r'[A-Za-z]{3,} [A-Za-z]{3,} [A-Za-z]{3,} [A-Za-z]{3,}', re.sub(r'#.*|(["\']).*?\1', '', s)):
        return False   # four words in a row outside strings and comments: a sentence, not code
    import ast
    try: ast.parse(s if not s.endswith(':') else s + ' pass'); return True
    except SyntaxError: return bool(re.match(r'^(?:import|from|for|while|if|with|def|class)\b|^[\w.]+\s*=\s*[\w.]+\($', s))

def md_code_findings(cells, page: str) -> list[Finding]:
    out = []
    for i, c in enumerate(cells):
        if c.get('cell_type') != 'markdown': continue
        src = _text(c.get('source', ''))
        lines = [l for l in _blank_out(_blank_out(src, FENCE_RE), MATHBLOCK_RE).splitlines() if l.strip()]
        if not lines: continue
        if lines[0].lstrip().startswith('#|'):
            out.append(Finding('md-code', page, _cid(c, i), f'Markdown cell starts with a cell directive {lines[0].strip()[:40]!r}: '
                               'a code cell committed as Markdown renders as garbled prose'))
            continue
        code = [l for l in lines if _code_like(l)]
        if len(code) >= 2 and len(code) > 0.5 * len(lines):
            out.append(Finding('md-code', page, _cid(c, i), f'{len(code)} of its {len(lines)} lines are Python statements '
                               f'({code[0].strip()[:50]!r}): a code cell committed as Markdown'))
    return out


# -- 2. list-para
_ITEM_RE = re.compile(r'^(\s*)(?:[-*+]|\d{1,3}[.)])\s+\S')

def list_para_lines(md: str) -> list[str]:
    "Lines that start a list item right after a paragraph line (Pandoc then reads them as text of the paragraph)."
    bad, block_is_list, prev = [], False, ''
    text = _mask_lines(_blank_out(_blank_out(md, FENCE_RE), HTMLCOMMENT_RE), MATHBLOCK_RE)
    for line in text.splitlines():
        if not line.strip():
            block_is_list, prev = False, ''; continue
        item = _ITEM_RE.match(line)
        if not prev:                                   # first line of a block
            block_is_list = bool(item)
        elif item and not block_is_list and not re.match(r'^\s*(?:#{1,6}\s|\||>|<)', prev):
            bad.append(line.strip())
            block_is_list = True                       # report a run of items once
        if re.match(r'^\s*(?:#{1,6}\s)', line): prev = ''; continue   # a heading ends its block
        prev = line
    return bad

def list_para_findings(cells, page: str) -> list[Finding]:
    out = []
    for where, md in _markdown_texts(cells):
        for line in list_para_lines(md):
            out.append(Finding('list-para', page, where, f'list item {line[:50]!r} follows a paragraph line with no blank '
                               'line: it renders as running text'))
    return out


# -- 9. output-repr
TMP_RE = re.compile(r'(?<![\w.])(?:/tmp/|/var/tmp/|/var/folders/)|(?<![\w-])tmp[a-z0-9_]{8}(?=[/\\\'"\s)\],]|$)', re.M)
NP_REPR_RE = re.compile(r'\bnp\.(?:float|int|uint|bool_|complex|str_)\w*\(|\barray\(\[[^()]*?\],?\s*dtype=\w+\)', re.S)
FLOAT_RE = re.compile(r'(?<![\w.])-?(\d+\.\d+)(?:[eE][-+]?\d+)?(?![\w.])')

def _long_float(t: str) -> str | None:
    for m in FLOAT_RE.finditer(t):
        digits = m.group(1).replace('.', '').lstrip('0')
        if len(digits) >= 12: return m.group(0)
    return None

def _shown(o) -> str:
    "The text of an output as the page shows it (Quarto picks HTML, then Markdown, then images, then plain text)."
    if o.get('output_type') == 'stream': return _text(o.get('text', ''))
    if o.get('output_type') == 'error': return ''
    d = o.get('data', {})
    if 'text/html' in d: return re.sub(r'<[^>]+>', ' ', re.sub(r'<style.*?</style>', ' ', _text(d['text/html']), flags=re.S))
    if 'text/markdown' in d: return _text(d['text/markdown'])
    if any(k.startswith('image/') for k in d): return ''
    return _text(d.get('text/plain', ''))

def output_repr_findings(cells, page: str) -> list[Finding]:
    out = []
    for i, c in enumerate(cells):
        if c.get('cell_type') != 'code' or _hidden_output(c): continue
        for o in c.get('outputs', []):
            t = _shown(o)
            m = TMP_RE.search(t)
            if m:
                line = next(l for l in t[m.start():].splitlines() or [''])
                out.append(Finding('output-repr', page, _cid(c, i), f'temporary path in the output: {(t[max(0, m.start() - 20):m.start()] + line)[:80].strip()!r}'))
            m = NP_REPR_RE.search(t)
            if m: out.append(Finding('output-repr', page, _cid(c, i), f'numpy repr in the output: {m.group(0)[:60]!r}'))
            f = _long_float(t)
            if f: out.append(Finding('output-repr', page, _cid(c, i), f'unrounded float repr in the output: {f!r}'))
    return out


# -- printed-table (review section 7: a Markdown table in a <pre> output)
_MD_ROW_RE = re.compile(r'^\s*\|.*\|\s*$')
_MD_SEP_RE = re.compile(r'^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)+\|?\s*$')

def printed_table_findings(cells, page: str) -> list[Finding]:
    out = []
    for i, c in enumerate(cells):
        if c.get('cell_type') != 'code' or _hidden_output(c): continue
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if o.get('output_type') == 'stream': t = _text(o.get('text', ''))
            elif d and not any(k in d for k in ('text/html', 'text/markdown')) and not any(k.startswith('image/') for k in d):
                t = _text(d.get('text/plain', ''))
            else: continue
            lines = t.splitlines()
            if any(_MD_SEP_RE.match(l) for l in lines) and sum(bool(_MD_ROW_RE.match(l)) for l in lines) >= 2:
                row = next(l for l in lines if _MD_ROW_RE.match(l))
                out.append(Finding('printed-table', page, _cid(c, i), f'a Markdown table printed as text ({row.strip()[:50]!r}): '
                                   'display it (IPython.display.Markdown or a DataFrame)'))
                break
    return out


# -- 10. harness-words
HARNESS_RES = [   # (pattern, applies inside code spans too)
    (re.compile(r'\bsmoke\b', re.I), False),
    (re.compile(r'\bnbdev_test\b'), True),
    (re.compile(r'\bhidden[- ]checks?\b', re.I), False),
    (re.compile(r'\bslow[- ]cells?\b', re.I), False),
    (re.compile(r'#\|\s*slow\b'), True),
    (re.compile(r'\bload average\b', re.I), False),
    (re.compile(r'\b(?:an|the) (?:earlier|previous|older) (?:version|draft|edition) of this (?:chapter|book|page)\b', re.I), False),
    # the source papers called "seed(s)"; random seeds ("seed 0", "three seeds", "per seed") are fine
    (re.compile(r'\bseed[- ](?:papers?|posters?|articles?|publications?|works?|methods?|text|pdf)\b', re.I), False),
    (re.compile(r'\b(?:in|from|by|than|beyond) the seeds?\b(?!\s*(?:\d|=|value|number|of\b|for\b|is\b|was\b|to\b))', re.I), False),
    (re.compile(r'\bthe seeds?\s+(?:say|says|state|states|claim|claims|report|reports|gives?|proves?|uses?|writes?'
                r'|derives?|defines?|describes?|does not|do not|doesn\'t|prints?|argues?|lists?)\b', re.I), False),
]

def harness_findings(cells, page: str) -> list[Finding]:
    if page.removesuffix('.html') == CONTRIBUTING: return []
    out = []
    for where, md in _markdown_texts(cells):
        for rx, in_spans in HARNESS_RES:
            t = _prose(md, spans=not in_spans)
            for m in rx.finditer(t):
                ctx = t[max(0, m.start() - 30):m.end() + 30].replace('\n', ' ').strip()
                out.append(Finding('harness-words', page, where, f'{m.group(0)!r} in prose: ...{ctx}...'))
    return out


# -- 11. title
MARKER_RE = re.compile(r'\s*[(\[](plan|recipe)[)\]]\s*$', re.I)

def _norm_title(t: str) -> str:
    t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', t)
    t = re.sub(r'[*_`]', '', t).replace('\u00a0', ' ').replace('’', "'").replace('–', '-').replace('—', '-')
    return re.sub(r'^(?:the|a|an) ', '', re.sub(r'\s+', ' ', t).strip().lower())

def _split_marker(t: str) -> tuple[str, str]:
    m = MARKER_RE.search(t)
    return (t[:m.start()], m.group(1).lower()) if m else (t, '')

def titles_agree(short: str, page_title: str) -> bool:
    """The sidebar (or index) title `short` names the chapter whose page title is `page_title`: equal (case, Markdown
    emphasis and a trailing "(plan)"/"(recipe)" marker aside), or `page_title` is `short` plus a subtitle after
    ': ', '? ', ' - ' (e.g. "Core" and "Core: settings, checks and small utilities")."""
    a, b = _norm_title(_split_marker(short)[0]), _norm_title(_split_marker(page_title)[0])
    if a == b: return True
    return bool(a) and b.startswith(a) and (b[len(a):].startswith((': ', ' - ', ' : ')) or (a.endswith('?') and b[len(a):].startswith(' ')))

def page_title(cells) -> str:
    md = next((c for c in cells if c.get('cell_type') == 'markdown'), None)
    first = _text(md.get('source', '')).splitlines()[0] if md else ''
    return first[2:].strip() if first.startswith('# ') else ''

def title_findings(cfg: dict | None = None, nbs: Path = NBS) -> list[Finding]:
    """Sidebar label (without its "NN · " prefix) against the page title (the notebook's `# Title`), and every chapter
    title the index names (a link to the chapter whose text is more than its number, or a "title"/"chapter" column
    of a Markdown table) against the same. Markers: the sidebar may say "(plan)"/"(recipe)" when the page title
    does not (the sidebar marks the status; the page says it in its text); when the page title has one, the sidebar
    must have the same."""
    cfg = cfg or quarto_config()
    out, titles = [], {}
    for _, href, text in sidebar_entries(cfg):
        stem = Path(href).stem
        nb = nbs / f'{stem}.ipynb'
        if not href.endswith('.ipynb') or not nb.exists() or text is None or not re.match(r'\d', stem): continue
        title = page_title(_cells(nb)); titles[stem] = (title, text)
        short = re.sub(r'^\s*\d+\w*\s*·\s*', '', text)
        page = f'{page_name(stem)}.html'
        if not titles_agree(short, title):
            out.append(Finding('title', page, 'title', f'sidebar says {short!r}, the page title is {title!r}'))
        else:
            mp, ms = _split_marker(title)[1], _split_marker(short)[1]
            if mp and mp != ms:
                out.append(Finding('title', page, 'title', f'the page title is marked ({mp}), the sidebar {short!r} is not'))
    index = nbs / 'index.ipynb'
    if index.exists():
        by_num = {re.match(r'(\d+)', s).group(1): s for s in titles if re.match(r'\d+_', s)}
        def check(named: str, stem: str, where: str):
            named = re.sub(r'[\[\]]', '', named)
            named = re.sub(r'^\s*(?:chapter\s+)?\d+\w*\s*(?:·|:|-|–|—)?\s*', '', named, flags=re.I).strip()
            if not named or re.fullmatch(r'[\d\s,–-]*', named) or stem not in titles: return
            title, text = titles[stem]
            short = re.sub(r'^\s*\d+\w*\s*·\s*', '', text)
            if not (titles_agree(named, title) or titles_agree(named, short) or titles_agree(short, named)):
                out.append(Finding('title', 'index.html', where, f'the index calls chapter {stem} {named!r}; '
                                   f'sidebar {short!r}, page {title!r}'))
        for i, c in enumerate(_cells(index)):
            if c.get('cell_type') != 'markdown': continue
            src = _prose(_text(c.get('source', '')), spans=False)
            for m in re.finditer(r'\[([^\]]+)\]\((\d+\w*_\w+)\.(?:ipynb|html)(?:#[^)]*)?\)', _text(c.get('source', ''))):
                check(m.group(1), m.group(2), _cid(c, i))
            lines = src.splitlines()
            for j, l in enumerate(lines[:-1]):
                if not (l.strip().startswith('|') and re.match(r'^\s*\|?\s*:?-{3,}', lines[j + 1])): continue
                head = [h.strip().lower() for h in l.strip().strip('|').split('|')]
                col = next((k for k, h in enumerate(head) if h in ('title', 'chapter', 'chapter title')), None)
                if col is None: continue
                for row in lines[j + 2:]:
                    if not row.strip().startswith('|'): break
                    cells_ = [x.strip() for x in row.strip().strip('|').split('|')]
                    num = re.search(r'\((\d+)\w*_\w+\.(?:ipynb|html)', row) or re.search(r'\b(\d{2})\b', cells_[col] if col < len(cells_) else '')
                    if num and num.group(1) in by_num and col < len(cells_):
                        named = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', cells_[col])
                        check(named, by_num[num.group(1)], _cid(c, i))
    return list(dict.fromkeys(out))


# -- 12. library-default
_DEFAULT_CLAIM_RE = re.compile(r'\bdefault(?:s|ed)?\b(?!\s+(?:table|experiments?|file|runs?|sweep|chapter|grid|results?)\b)', re.I)
# whose default: the papers', the authors', a candidate's... is not the library's
_NOT_OURS_RE = re.compile(r"(?:papers?|authors?|release[sd]?|code|their|original|candidate|proposed|possible|alternative|new|other|"
                          r"different|a)['’]?s?['’]?\s+(?:own\s+)?default", re.I)
_HISTORY_RE = re.compile(r'\bused to\b|\bno longer\b|\bpreviously\b|\b(?:was|were) (?:the )?default|\bformer(?:ly)?\b|\buntil\b'
                         r'|\bat the time\b|\bwhen (?:this|the|these|that) [\w -]{0,30}(?:was|were) (?:run|made|measured|trained|written)\b', re.I)
NEAR = 100   # characters between a default claim and the value it states
# what names each variant of MR²; a clause that names the true default's variant is never flagged
MR2_VARIANT_DESC = {
    'paper': r"variant\s*=\s*['\"]paper['\"]`?|paper-(?:faithful|literal)(?:\s+(?:term|form))?|(?:the\s+)?paper\b(?:['’]s)?(?:\s+(?:term|form|variant))?",
    'released': r"variant\s*=\s*['\"]released['\"]`?|\breleased\b|(?:the\s+)?authors['’] code",
}
# between a default claim and the variant it names: no clause end, and no comparison sign (an ordering such as
# "MR², library default 66.6 % ≈ MR², paper form 65.3 %" names two table rows, not one claim)
_GAP = r"(?:[^;|.≈<>]|\.\d){0,60}?"

def _mr2_claim_res(v: str) -> list:
    "Narrow statements that MR²'s default is variant `v`."
    val, desc = rf"`?variant\s*=\s*['\"]{re.escape(v)}['\"]`?", MR2_VARIANT_DESC[v]
    return [re.compile(x, re.I) for x in (
        rf"{val}\s*\((?:the\s+)?(?:library['’]s\s+)?default\)",                                  # `variant='paper'` (default)
        rf"{val},?\s+(?:is\s+)?(?:the\s+)?(?:library['’]s\s+|class['’]s?\s+)?default\b",          # variant='paper' is the default
        rf"\bdefaults?\s+(?:is\s+|are\s+|to\s+|:\s*)(?:the\s+)?(?:{desc})",                      # the default is the paper's form
        rf"\b(?:library|MR2Loss|MR²|MR2|class)(?:['’]s?)?\s+defaults?\b{_GAP}(?:{desc})",         # the library default (..., paper-faithful term)
    )]
DBM_BASE_RES = {
    'ce': re.compile(r"base\s*=\s*['\"]ce['\"]|\bCE base\b|\bDBM-CE\b|cross-entropy base", re.I),
    'bs': re.compile(r"base\s*=\s*['\"]bs['\"]|\bBS base\b|\bDBM-BS\b|Balanced[- ]Softmax base", re.I),
}
_SCALE_RE = re.compile(r"(?:\bscale\s*(?:=|of|:)?|\bs\s*=)\s*\$?\s*(\d+(?:\.\d+)?)\b", re.I)
_THEIRS_RE = re.compile(r"(?:papers?|authors?|release[sd]?|code)['’]?s?['’]?\s+(?:cosine\s+)?(?:scale\s*)?(?:of\s*)?\$?\s*$", re.I)

@functools.lru_cache(maxsize=None)
def library_defaults() -> dict:
    "The true defaults, read from the library's signatures."
    import inspect
    sys.path.insert(0, str(ROOT))
    from margin_notes.mr2 import MR2Loss
    from margin_notes import dbm
    p, q = inspect.signature(MR2Loss).parameters, inspect.signature(dbm.DBMLoss).parameters
    s = q['scale'].default
    if s == 'auto':   # dbm_default_scale(K) (chapter 16's rule): any value it gives for 2 <= K <= 100,000 is a true default
        s = (dbm.dbm_default_scale(2), dbm.dbm_default_scale(100_000))
    return {'mr2_variant': p['variant'].default, 'dbm_base': q['base'].default, 'dbm_scale': s}

def _scale_ok(v: float, default) -> bool:
    "Is `v` (as prose states it, rounded) a default scale of DBMLoss: the fixed default, or within the range of 'auto'?"
    lo, hi = (float(default), float(default)) if not isinstance(default, (tuple, list)) else map(float, default)
    return lo - 0.05 <= v <= hi + 0.05

def _sentences(md: str):
    t = _blank_out(_blank_out(md, FENCE_RE), HTMLCOMMENT_RE)
    blocks = re.split(r'\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)|\n(?=\s*\|)', t)
    # a table row is one statement per cell
    for block in (c for b in blocks for c in (re.split(r'(?<!\\)\|', b) if b.lstrip().startswith('|') else [b])):
        yield from (' '.join(s.split()) for s in re.split(r'(?<=;)\s+|(?<=[.!?])\s+(?=[A-Z`*(\[$])', block) if s.strip())

def default_claim_problem(sentence: str, defaults: dict | None = None) -> str | None:
    """Why `sentence` states a library default of MR2Loss / DBMLoss that the library does not have (None if it
    does not): a claim that something is the default ("default", "defaults to", not "the papers' default", "a
    candidate default", "the defaults table", nor history such as "used to default"), within NEAR characters
    of a value for MR²'s variant or DBM's base / scale, where the sentence never names the true default."""
    d = defaults or library_defaults()
    s = ' '.join(sentence.split())
    claims = [m.start() for m in _DEFAULT_CLAIM_RE.finditer(s) if not _NOT_OURS_RE.search(s[max(0, m.start() - 30):m.end()])]
    if not claims or _HISTORY_RE.search(s): return None
    near = lambda pos: any(abs(pos - c) <= NEAR for c in claims)
    def said(res):
        return [k for k, rx in res.items() if any(near(m.start()) for m in rx.finditer(s))]
    if re.search(r'\bMR2|MR²|\bvariant\s*=', s, re.I) and not re.search(MR2_VARIANT_DESC.get(d['mr2_variant'], '$^'), s, re.I):
        for v in MR2_VARIANT_DESC:
            if v != d['mr2_variant'] and any(rx.search(s) for rx in _mr2_claim_res(v)):
                return f"says MR²'s default is variant={v!r}; MR2Loss's default is variant={d['mr2_variant']!r}"
    if re.search(r'\bDBM', s):
        b = said(DBM_BASE_RES)
        if b and d['dbm_base'] not in b and not DBM_BASE_RES.get(d['dbm_base'], re.compile('$^')).search(s):
            return f"says DBM's default base is {b[0]!r}; DBMLoss's default is base={d['dbm_base']!r}"
        scales = [(float(m.group(1)), m.start()) for m in _SCALE_RE.finditer(s) if not _THEIRS_RE.search(s[max(0, m.start() - 25):m.start()])]
        if any(_scale_ok(v, d['dbm_scale']) for v, _ in scales): return None
        wrong = [v for v, pos in scales if near(pos)]
        if wrong:
            ds = d['dbm_scale']
            true = f'{ds:g}' if not isinstance(ds, (tuple, list)) else f"'auto' ({ds[0]:g} to {ds[1]:.3g} by the number of classes)"
            return f"says DBM's default scale is {wrong[0]:g}; DBMLoss's default is scale={true}"
    return None

def library_default_findings(cells, page: str, defaults: dict | None = None) -> list[Finding]:
    out = []
    for where, md in _markdown_texts(cells):
        for s in _sentences(md):
            why = default_claim_problem(s, defaults)
            if why: out.append(Finding('library-default', page, where, f'{why}: {" ".join(s.split())[:90]!r}'))
    return out


def prose_findings(nb_path: Path, defaults: dict | None = None) -> list[Finding]:
    "Every notebook-side reader check of one notebook."
    cells, page = _cells(nb_path), f'{page_name(Path(nb_path).stem)}.html'
    return (md_code_findings(cells, page) + list_para_findings(cells, page) + output_repr_findings(cells, page)
            + printed_table_findings(cells, page)
            + harness_findings(cells, page) + library_default_findings(cells, page, defaults))


# -- page-side: 3-8, from the probe's `reader` measurements
def book_min_font_pt() -> float:
    "The smallest font size (pt) margin_notes/style.py sets for a figure."
    txt = (ROOT / 'margin_notes' / 'style.py').read_text()
    m = re.search(r'BOOK_RC\s*=\s*\{(.*?)\n\}', txt, re.S)
    sizes = [float(v) for k, v in re.findall(r"'([\w.]*size)':\s*([\d.]+)", m.group(1) if m else '') if k != 'figure.figsize']
    return min(sizes) if sizes else 10.0

def book_dpi() -> float:
    m = re.search(r"'figure\.dpi':\s*([\d.]+)", (ROOT / 'margin_notes' / 'style.py').read_text())
    return float(m.group(1)) if m else 100.0

_REL_SIZES = {'xx-small': 0.579, 'x-small': 0.694, 'small': 0.833, 'medium': 1.0}
_FONTSIZE_RE = re.compile(r"(?:\b(?:fontsize|labelsize|titlesize)\b|(?<![\w.])size\b|['\"](?:[\w.]*size)['\"])\s*[=:]\s*"
                          r"['\"]?(xx-small|x-small|small|[\d.]+)\b")

def _font_sizes(src: str) -> list[float]:
    out = []
    for v in _FONTSIZE_RE.findall(src):
        try: out.append(_REL_SIZES[v] * 10.0 if v in _REL_SIZES else float(v))
        except ValueError: pass
    return [x for x in out if x > 0]

@functools.lru_cache(maxsize=None)
def library_font_sizes() -> dict:
    "Smallest explicit font size (pt) in each function of margin_notes/*.py that sets one (a cell calling it draws it)."
    import ast
    out = {}
    for f in sorted((ROOT / 'margin_notes').glob('*.py')):
        txt = f.read_text()
        try: tree = ast.parse(txt)
        except SyntaxError: continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seg = ast.get_source_segment(txt, node) or ''
                if not re.search(r'\b(?:plt|ax|axs|fig)\.', seg): continue      # draws nothing
                sizes = _font_sizes(seg)
                if sizes: out[node.name] = min(sizes + [out.get(node.name, 1e9)])
    return out

def cell_min_font_pt(src: str, base: float, library: dict | None = None) -> float:
    """The smallest font size a cell's figure uses (pt): `base` (the book style's smallest), an explicit smaller size
    in the cell's source, or one set inside a library function the cell calls."""
    library = library_font_sizes() if library is None else library
    return min([base] + [library[n] for n in re.findall(r'\b(\w+)\s*\(', src) if n in library] + _font_sizes(src))

def image_dpi(src: str, page: Path) -> float:
    "The dpi a PNG records (matplotlib writes it), else the book's figure dpi."
    import base64, io
    try:
        from PIL import Image
        if src.startswith('data:'): im = Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1])))
        else: im = Image.open(page.parent / unquote(urlsplit(src).path))
        dpi = im.info.get('dpi')
        if dpi and dpi[0] > 1: return float(dpi[0])
    except Exception: pass
    return book_dpi()

def cell_sources(cells) -> dict[str, str]:
    "Cell source by every id the page may give its cell: the notebook id, 'cell-<label>' and '<label>'."
    out = {}
    for c in cells:
        src = _text(c.get('source', ''))
        if c.get('id'): out[c['id']] = src
        m = re.search(r'^#\|\s*label:\s*(\S+)', src, re.M)
        if m: out[m.group(1)] = out[f'cell-{m.group(1)}'] = src
    return out

def chapter_numbers(nbs: Path = NBS) -> set[str]:
    return {m.group(1) for p in nbs.glob('*.ipynb') if (m := re.match(r'(\d{2})_', p.stem))}

def reader_findings(probe: dict, page: Path, cells=None, numbers: set[str] | None = None) -> list[Finding]:
    "Page-side reader checks from the probe's `reader` measurements."
    r, name = probe.get('reader') or {}, page.name
    srcs = cell_sources(cells or [])
    numbers = chapter_numbers() if numbers is None else numbers
    own = re.match(r'(\d{2})_', next((p.stem for p in NBS.glob('*.ipynb') if f'{page_name(p.stem)}.html' == name), '') or '')
    out, base_pt = [], book_min_font_pt()
    for im in r.get('imgs', []):
        where = f'cell {im["cell"]}' if im.get('cell') else f'image {im["src"][:40]}'
        if im['nat'] > 0 and im['shown'] > 0:
            scale = im['shown'] / im['nat']
            if scale < IMG_MIN_SCALE:
                out.append(Finding('img-scale', name, where, f'figure shown at {scale:.0%} of its natural width '
                                   f'({im["nat"]} px drawn, {im["shown"]:.0f} px shown; needs >= {IMG_MIN_SCALE:.0%})'))
            pt = cell_min_font_pt(srcs.get(im.get('cell') or '', ''), base_pt)
            px = pt * image_dpi(im['src'], page) / 72 * min(scale, 1.0)
            if px < IMG_MIN_TEXT_PX:
                out.append(Finding('img-font', name, where, f'its smallest text ({pt:g} pt) renders at {px:.1f} px '
                                   f'(< {IMG_MIN_TEXT_PX:g} px)'))
        if not re.search(r'Figure\s*\d+', im.get('caption') or ''):
            out.append(Finding('caption', name, where, 'figure without a numbered caption (#| label: fig-... and #| fig-cap:)'))
        alt = (im.get('alt') or '').strip()
        if not alt or alt.lower() in ('png', 'image', 'figure', 'plot', 'output', 'img') or \
                re.fullmatch(r'(?:figure|image|plot|output)[\s-]*\d*', alt, re.I) or \
                alt == re.sub(r'^Figure\s*\d+\s*:\s*', '', (im.get('caption') or '').strip()):
            out.append(Finding('alt', name, where, f'figure without alt text (alt={alt!r}; add #| fig-alt:)'))
    for t in r.get('tables', []):
        if re.search(r'^\s*(?:type|default|details)\b', t.get('head', ''), re.I) and \
                set(re.findall(r'\w+', t.get('head', '').lower())) <= {'type', 'default', 'details'}:
            continue   # an API parameter table (nbdev show_doc)
        if not re.search(r'Table\s*\d+', t.get('caption') or ''):
            out.append(Finding('caption', name, f'cell {t["cell"]}' if t.get('cell') else 'table',
                               f'results table without a numbered caption (#| label: tbl-... and #| tbl-cap:): {t.get("head", "")[:50]!r}'))
    seen = set()
    for m in r.get('chapters', []):
        if m['nn'] not in numbers or (own and m['nn'] == own.group(1)): continue
        key = (m['nn'], m['text'])
        if key in seen: continue
        seen.add(key)
        out.append(Finding('chapter-link', name, m.get('where') or 'prose', f'{m["text"]!r} is not a link'))
    for href in sorted(set(r.get('sources', []))):
        if not re.search(r'#L\d+(?:-L\d+)?$', href):
            out.append(Finding('source-line', name, 'source link', f'"source" link without a line number: {href[-60:]!r}'))
    for s in r.get('sigLinks', []):
        out.append(Finding('sig-link', name, s.get('where') or 'signature', f'raw Markdown link in a code block: {s["text"]!r}'))
    for m in r.get('mathWide', []):
        if m['px'] > MATH_SLACK_PX:
            out.append(Finding('math-wide', name, m.get('where') or 'math', f'display math {m["px"]} px wider than the text '
                               f'column: {m["text"]!r}'))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--no-build', action='store_true', help='check the _docs/ that is there')
    ap.add_argument('--prose-only', action='store_true',
                    help='only the checks that read the notebooks and _quarto.yml (no build, no browser)')
    ap.add_argument('--docs', type=Path, default=DOCS)
    ap.add_argument('--only', nargs='*', help='pages to check (e.g. mr2 or 13_mr2)')
    ap.add_argument('--shots', nargs='*', default=[], help='pages to screenshot into screenshots/')
    ap.add_argument('--budget', type=int, default=20000, help='virtual time budget per page (ms)')
    ap.add_argument('--timeout', type=int, default=120)
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args(argv)
    probs = chapter_list_problems() + title_problems()
    nbs = chapters(a.only)
    want = {f'{page_name(nb.stem)}.html' for nb in nbs}
    titles = [f for f in title_findings() if f.page in want]
    defaults = library_defaults()
    prose = {nb: prose_findings(nb, defaults) for nb in nbs}
    counts: dict[str, int] = {}
    def report(findings) -> list[str]:
        for f in findings: counts[f.check] = counts.get(f.check, 0) + 1
        return [str(f) for f in findings]
    passed = failed = 0
    for p in probs: print(f'FAIL chapter list: {p}'); failed += 1
    if a.prose_only:
        for nb in nbs:
            name = f'{page_name(nb.stem)}.html'
            pp = report([f for f in titles if f.page == name] + prose[nb])
            if pp: failed += 1; print(f'FAIL {name} ({nb.name}):'); print('\n'.join('     ' + x for x in pp))
            else: passed += 1; print(f'ok   {name}')
        _summary(counts, passed, failed, prose_only=True)
        return 1 if failed else 0
    chromium()
    if not (MATHJAX_DIR / 'MathJax.js').exists():
        sys.exit(f'check_site: no {MATHJAX_DIR}/MathJax.js (Debian: apt-get install libjs-mathjax)')
    if not a.no_build:
        subprocess.run([sys.executable, str(ROOT / 'scripts' / 'build_docs.py')], cwd=ROOT, check=True)
    docs = a.docs.resolve()
    srv, url = serve(docs)
    shots = {page_name(Path(s).stem.removesuffix('.html')) for s in a.shots}
    numbers = chapter_numbers()

    def one(nb: Path):
        name = page_name(nb.stem)
        page = docs / f'{name}.html'
        if not page.exists(): return nb, page, None, f'no page {page.name} in {docs.name}/ (the build dropped it)'
        probe, err = browse(f'{url}/{page.name}', a.budget, a.timeout, SHOTS / f'{nb.stem}.png' if name in shots else None)
        return nb, page, probe, err

    with ThreadPoolExecutor(a.jobs) as pool: seen = list(pool.map(one, nbs))
    live_ids = {page.name: set(p['ids']) for _, page, p, _ in seen if p}
    index_extra = [f for f in titles if f.page not in {page.name for _, page, _, _ in seen}]
    for nb, page, probe, err in seen:
        pp = [err] if err else page_problems(expectations(nb), probe) + link_problems(
            page, probe['links'] + static_links(page), docs, live_ids, served=url)
        reader = [f for f in titles if f.page == page.name] + prose[nb]
        if probe: reader += reader_findings(probe, page, _cells(nb), numbers)
        pp += report(reader)
        if pp:
            failed += 1; print(f'FAIL {page.name} ({nb.name}):'); print('\n'.join('     ' + x for x in pp))
        else:
            passed += 1
            print(f'ok   {page.name:28s} {len(probe["imgs"])} figures, {probe["tables"]} tables, '
                  f'{probe["mathTypeset"]} formulas, {len(probe["links"])} links')
    for f in report(index_extra): print(f'FAIL {f}'); failed += 1
    srv.shutdown()
    _summary(counts, passed, failed)
    return 1 if failed else 0


def _summary(counts: dict, passed: int, failed: int, prose_only: bool = False):
    if counts:
        print('reader checks failed: ' + ', '.join(f'{k} {counts[k]}' for k in READER_CHECKS if k in counts))
    print(f'check-site{" --prose-only" if prose_only else ""}: {passed} passed, {failed} failed')


if __name__ == '__main__':
    sys.exit(main())
