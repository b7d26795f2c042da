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
5. --shots NAME ... saves screenshots of those pages in screenshots/.

Prints one line per page and finally `check-site: N passed, N failed`; exits 1 on any failure.
Needs: chromium, libjs-mathjax (Debian), Quarto (for the build).

Usage: python scripts/check_site.py [--no-build] [--only PAGE ...] [--shots PAGE ...] [--budget MS] [--jobs N]
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
CDN_MATHJAX_RE = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/mathjax@[^"]*"[^>]*></script>')
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
    "nbdev names pages without the number prefix: 10_mr2 -> mr2(.html)."
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--no-build', action='store_true', help='check the _docs/ that is there')
    ap.add_argument('--docs', type=Path, default=DOCS)
    ap.add_argument('--only', nargs='*', help='pages to check (e.g. mr2 or 10_mr2)')
    ap.add_argument('--shots', nargs='*', default=[], help='pages to screenshot into screenshots/')
    ap.add_argument('--budget', type=int, default=20000, help='virtual time budget per page (ms)')
    ap.add_argument('--timeout', type=int, default=120)
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args(argv)
    chromium()
    if not (MATHJAX_DIR / 'MathJax.js').exists():
        sys.exit(f'check_site: no {MATHJAX_DIR}/MathJax.js (Debian: apt-get install libjs-mathjax)')
    probs = chapter_list_problems() + title_problems()
    if not a.no_build:
        subprocess.run([sys.executable, str(ROOT / 'scripts' / 'build_docs.py')], cwd=ROOT, check=True)
    docs = a.docs.resolve()
    srv, url = serve(docs)
    nbs = chapters(a.only)
    shots = {page_name(Path(s).stem.removesuffix('.html')) for s in a.shots}

    def one(nb: Path):
        name = page_name(nb.stem)
        page = docs / f'{name}.html'
        if not page.exists(): return nb, page, None, f'no page {page.name} in {docs.name}/ (the build dropped it)'
        probe, err = browse(f'{url}/{page.name}', a.budget, a.timeout, SHOTS / f'{nb.stem}.png' if name in shots else None)
        return nb, page, probe, err

    with ThreadPoolExecutor(a.jobs) as pool: seen = list(pool.map(one, nbs))
    live_ids = {page.name: set(p['ids']) for _, page, p, _ in seen if p}
    passed = failed = 0
    for p in probs: print(f'FAIL chapter list: {p}'); failed += 1
    for nb, page, probe, err in seen:
        pp = [err] if err else page_problems(expectations(nb), probe) + link_problems(
            page, probe['links'] + static_links(page), docs, live_ids, served=url)
        if pp:
            failed += 1; print(f'FAIL {page.name} ({nb.name}):'); print('\n'.join('     ' + x for x in pp))
        else:
            passed += 1
            print(f'ok   {page.name:28s} {len(probe["imgs"])} figures, {probe["tables"]} tables, '
                  f'{probe["mathTypeset"]} formulas, {len(probe["links"])} links')
    srv.shutdown()
    print(f'check-site: {passed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
