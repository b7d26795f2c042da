#!/usr/bin/env python
"""Offline render check of the book (`make check-site`).

For every chapter notebook in nbs/ (in sidebar order):

1. execute it in smoke mode (MARGIN_NOTES_SMOKE=1, IN_TEST=1) in a fresh Python process with execnb,
   skipping the cells nbdev_test skips (settings.ini tst_flags, `#| eval: false`), per-cell timeout;
   the executed copy goes to _render/executed/ (`--no-execute` reuses it);
2. run nbdev's own notebook processors on it (the ones `nbdev_docs` runs before Quarto: show_doc
   cells, doc links, hidden cells, folds), as _proc/ would hold it;
3. convert it to HTML with nbconvert, MathJax loaded from Debian's libjs-mathjax (file://, no network),
   into _render/html/;
4. open the page in headless Chromium, let MathJax finish (virtual time budget), dump the DOM and take a
   screenshot (screenshots/<chapter>.png);
5. assert: MathJax typeset every formula (no merror / "Math Processing Error" / unknown macro), every
   image output of the notebook is an <img> with data that the browser decoded, no traceback or error
   output in any cell.

Prints one line per chapter and 'N passed, N failed'; exits 1 on any failure.
Needs: apt-get install -y chromium libjs-mathjax (and the project's .venv).

Usage: python scripts/check_site.py [--no-execute] [--only NAME ...] [--timeout S] [--jobs N]
"""
from __future__ import annotations
import argparse, configparser, json, os, re, shutil, subprocess, sys, tempfile, time
from html import unescape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
RENDER = ROOT / '_render'
SHOTS = ROOT / 'screenshots'

# Chapters listed in _quarto.yml whose notebooks are not written yet. A listed chapter that is missing
# from nbs/ is an error unless it is named here; remove names as the chapters land.
PLANNED = set()  # chapters listed in _quarto.yml but not written yet
# Notebooks in nbs/ deliberately left out of the sidebar (none so far).
HIDDEN: set[str] = set()

MATHJAX_CANDIDATES = [
    Path('/usr/share/javascript/mathjax/MathJax.js'),      # Debian libjs-mathjax (2.7.x)
    Path('/usr/share/mathjax/MathJax.js'),
]
MATHJAX_CONFIG = 'TeX-AMS_CHTML-full'                      # CommonHTML output, the config nbconvert uses
CHROMIUM_CANDIDATES = ['chromium', 'chromium-browser', 'google-chrome']
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--no-first-run', '--hide-scrollbars', '--mute-audio',
                  '--allow-file-access-from-files']


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
    for n in sorted(set(listed) | present):  # nbdev names pages without the number prefix: 04_mr2 -> mr2.html
        pages.setdefault(re.sub(r'^\d+[a-zA-Z0-9]*_', '', n.lower()), []).append(n)
    probs += [f'{v} all render to {k}.html (nbdev sets output-file from the name without its number prefix: '
              f'rename one of them)' for k, v in pages.items() if len(v) > 1]
    return probs

def chapters_to_check(only=None) -> list[Path]:
    present = {p.stem: p for p in NBS.glob('*.ipynb')}
    order = [n for n in listed_chapters() if n in present] + sorted(set(present) - set(listed_chapters()))
    if only:
        want = [o.removesuffix('.ipynb') for o in only]
        bad = [o for o in want if o not in present]
        if bad: sys.exit(f'--only: no such notebook in nbs/: {bad}')
        order = [n for n in order if n in want]
    return [present[n] for n in order]


# ---------------------------------------------------------------- step 1+2: execute and process (child)
def _tst_flags() -> set[str]:
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini')
    return set(cp['DEFAULT'].get('tst_flags', '').split())

def _register_own_doclinks():
    "Doc links come from the `nbdev` entry points of installed packages; `pip install -e .` registers ours."
    import nbdev.doclinks as dl
    from importlib.metadata import EntryPoint
    eps = list(dl.entry_points(group='nbdev'))
    if any(e.name == 'margin_notes' for e in eps): return
    own = EntryPoint(name='margin_notes', value='margin_notes._modidx:d', group='nbdev')
    orig = dl.entry_points
    dl.entry_points = lambda group=None, **kw: eps + [own] if group == 'nbdev' else orig(group=group, **kw)
    dl._build_lookup_table.cache_clear()

def _child_execute(src: Path, dst: Path, timeout: int, execute: bool, smoke: bool = True) -> int:
    "Runs in a fresh process: execute `src` (unless not `execute`), write it and its nbdev-processed copy."
    if smoke: os.environ.setdefault('MARGIN_NOTES_SMOKE', '1'); os.environ['IN_TEST'] = '1'
    else:  # full sizes (cells flagged slow/gpu are still skipped)
        for k in ('MARGIN_NOTES_SMOKE', 'IN_TEST'): os.environ.pop(k, None)
    os.environ.setdefault('MPLBACKEND', 'Agg'); os.environ.setdefault('OMP_NUM_THREADS', '1')
    sys.path.insert(0, str(ROOT))  # as nbdev_test does (basepath): the library without `pip install -e .`
    from execnb.nbio import read_nb, write_nb
    from nbdev.process import extract_directives
    rc = 0
    if execute:
        from execnb.shell import CaptureShell
        flags = _tst_flags()
        nb = read_nb(src)
        def _skip(cell):
            if cell.cell_type != 'code': return True
            if 'nbdev_export(' in cell.source: return True
            d = extract_directives(cell, remove=False)
            if d.get('eval:', [''])[0].lower() == 'false': return True
            return bool(flags & d.keys())
        sh = CaptureShell(src, timeout=timeout)
        cwd = os.getcwd(); os.chdir(src.parent)
        try: sh.run_all(nb, exc_stop=True, preproc=_skip)
        except BaseException as e:  # the error output is already in the failing cell; keep going to render it
            print(f'  execution stopped: {type(e).__name__}: {e}'.splitlines()[0], file=sys.stderr); rc = 1
        finally: os.chdir(cwd)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dst)
    # nbdev's processors, as nbdev_docs runs them (nbdev.serve_drv): show_doc, links, hide, fold, frontmatter
    _register_own_doclinks()
    from nbdev.processors import FilterDefaults
    nb = read_nb(dst if dst.exists() else src)
    nb.path_ = str(src)  # frontmatter uses the chapter's own name (output-file) and location
    cwd = os.getcwd(); os.chdir(src.parent)
    try: FilterDefaults()(nb)
    except Exception as e:  # render the executed notebook as it is, so the page shows what went wrong
        cause = e.__cause__ or e.__context__
        lines = [l for l in str(e).splitlines()[1:] if l.strip() and not l.startswith('#|')]
        where = repr(lines[0][:60]) if lines else '?'
        print(f'  execution stopped: nbdev docs processing failed in the cell starting {where}: '
              f'{type(cause).__name__ if cause else type(e).__name__}: {cause or e}'.splitlines()[0]
              + ' (nbdev runs every cell holding an import while building the docs: keep imports in cells of their own)',
              file=sys.stderr)
        rc = 1; nb = read_nb(dst if dst.exists() else src); nb.path_ = str(src)
    finally: os.chdir(cwd)
    fm = getattr(nb, 'frontmatter_', {}) or {}
    cells = []
    for c in nb.cells:  # drop nbdev's own raw frontmatter cell: Quarto reads it, nbconvert would hide it
        if c.cell_type == 'raw' and c.source.startswith('---'): continue
        c.pop('directives_', None)
        cells.append(c)
    if fm.get('title'):  # the title and summary line, as Quarto shows them from the frontmatter
        head = f"# {fm['title']}\n\n" + (f"> {fm['description']}\n" if fm.get('description') else '')
        cells = [dict(cell_type='markdown', metadata={}, source=head)] + cells
    nb.cells = cells
    nb.metadata['site_check'] = dict(frontmatter={k: str(v) for k, v in fm.items()})
    for a in ('path_', 'frontmatter_'): nb.pop(a, None)
    write_nb(nb, dst.with_suffix('.proc.ipynb'))
    return rc


def execute_chapter(src: Path, args) -> tuple[Path, float, str]:
    dst = RENDER / 'executed' / src.name
    t0 = time.time()
    fresh = dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime
    if args.no_execute and dst.exists():
        note = 'reused executed copy' + ('' if fresh else ' (older than the notebook)')
        execute = False
    elif args.no_execute:
        note, execute = 'no executed copy: stored outputs', False
        dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, dst)
    else:
        note, execute = 'executed', True
        dst.unlink(missing_ok=True)  # never reuse a copy from an earlier run by accident
    dst.with_suffix('.proc.ipynb').unlink(missing_ok=True)
    cmd = [sys.executable, __file__, '--_child', str(src), str(dst), str(args.cell_timeout), str(int(execute)),
           str(int(not getattr(args, 'full', False)))]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        if r.returncode not in (0, 1): note += f'; child failed rc={r.returncode}: {r.stderr.strip()[-2000:]}'
        elif r.returncode == 1:
            why = [l for l in r.stderr.splitlines() if 'execution stopped' in l]
            note += '; ' + (why[-1].strip() if why else 'execution stopped at an error')
    except subprocess.TimeoutExpired: note += f'; TIMEOUT after {args.timeout}s'
    return dst.with_suffix('.proc.ipynb'), time.time() - t0, note


# ---------------------------------------------------------------- step 3: HTML
_PROBE = r"""
<script>
(function(){
  function report(extra){
    var q = function(s){ return document.querySelectorAll(s).length; };
    var imgs = Array.prototype.map.call(document.querySelectorAll('.jp-OutputArea img, .output img, img.site-check'),
      function(i){ return {w: i.naturalWidth, h: i.naturalHeight, n: (i.getAttribute('src')||'').length,
                           y: Math.round(i.getBoundingClientRect().top + window.scrollY),
                           data: (i.getAttribute('src')||'').slice(0, 11) === 'data:image/'}; });
    var body = document.body.innerText || '';
    var r = {mathjax: !!(window.MathJax && MathJax.Hub), version: window.MathJax && MathJax.version,
      scripts: q('script[type^="math/tex"]'), rendered: q('.mjx-chtml.MathJax_CHTML'),
      merror: q('.mjx-merror') + q('merror'), mjx_error: q('.MathJax_Error') + q('.noError'),
      undefined_macro: q('.mjx-mtext[style*="color: red"]'),
      processing_error: body.indexOf('Math Processing Error') >= 0,
      imgs: imgs, traceback: body.indexOf('Traceback (most recent call last)') >= 0,
      links: q('a[href*=".html#"]'), height: document.documentElement.scrollHeight};
    if (extra) for (var k in extra) r[k] = extra[k];
    document.body.setAttribute('data-site-check', JSON.stringify(r));
  }
  window.addEventListener('load', function(){
    if (window.MathJax && MathJax.Hub) MathJax.Hub.Queue(function(){ report(); });
    else report({note: 'MathJax not loaded'});
  });
})();
</script>
"""
# Errors must show as errors: switch off the TeX extensions that hide them (noErrors shows the raw TeX,
# noUndefined paints unknown macros red); the site's MathJax 3 shows them as errors too.
_MJ_CONFIG = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({TeX: {noErrors: {disabled: true}, noUndefined: {disabled: true}}, messageStyle: 'none'});
</script>
"""

def mathjax_url() -> str:
    for p in MATHJAX_CANDIDATES:
        if p.exists(): return f'file://{p}?config={MATHJAX_CONFIG}'
    sys.exit('MathJax not found: apt-get install -y libjs-mathjax')

def to_html(proc_nb: Path, out: Path) -> dict:
    "Convert the processed notebook to HTML (local MathJax); return counts read from the notebook."
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(proc_nb, as_version=4)
    for i, c in enumerate(nb.cells):
        c.setdefault('id', f'cell-{i}')
        if c.cell_type != 'code': continue
        # Quarto cell options that nbdev leaves for Quarto: mirror them with nbconvert's removal tags
        opts = dict(re.findall(r'^#\|\s*([\w-]+)\s*:\s*(\S+)', c.source, flags=re.M))
        tags = c.metadata.setdefault('tags', [])
        if opts.get('echo') == 'false': tags.append('remove_input')
        if opts.get('output') == 'false': tags.append('remove_output')
        if opts.get('include') == 'false': tags.append('remove_cell')
        for o in c.get('outputs', []):  # Quarto's link attributes in show_doc markdown, which mistune prints
            if 'text/markdown' in o.get('data', {}):
                o.data['text/markdown'] = re.sub(r'\{target="_blank"[^}]*\}', '', o.data['text/markdown'])
    info = dict(images=0, errors=[], math=0)
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'markdown':
            src = re.sub(r'```.*?```|`[^`]*`', '', c.source, flags=re.S)
            info['math'] += len(re.findall(r'\$\$.+?\$\$|(?<![\\$])\$(?!\$)[^$\n]+?(?<!\\)\$', src, flags=re.S))
        for o in c.get('outputs', []):
            data = o.get('data', {})
            info['images'] += any(k.startswith('image/') for k in data)
            text = ''.join(o.get('text', '')) + ''.join(data.get('text/plain', '')) + ''.join(data.get('text/html', ''))
            if o.output_type == 'error': info['errors'].append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}"[:200])
            elif 'Traceback (most recent call last)' in text: info['errors'].append(f'cell {i}: traceback in output')
    from traitlets.config import Config
    c = Config(); c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = ('remove_cell',)
    c.TagRemovePreprocessor.remove_input_tags = ('remove_input',)
    c.TagRemovePreprocessor.remove_all_outputs_tags = ('remove_output',)
    exp = HTMLExporter(config=c, template_name='lab', mathjax_url=mathjax_url(),
                       exclude_input_prompt=True, exclude_output_prompt=True)  # Quarto shows no prompts
    html, _ = exp.from_notebook_node(nb)
    html = html.replace('<script src="file://', _MJ_CONFIG + '<script src="file://', 1)
    html = html.replace('</body>', _PROBE + '</body>', 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html)
    return info


# ---------------------------------------------------------------- step 4: Chromium
def chromium() -> str:
    if os.environ.get('CHROME'): return os.environ['CHROME']
    for c in CHROMIUM_CANDIDATES:
        if shutil.which(c): return shutil.which(c)
    sys.exit('Chromium not found: apt-get install -y chromium')

def browse(page: Path, shot: Path | None, budget_ms: int, timeout: int) -> tuple[dict | None, str]:
    "Dump the DOM after MathJax and take a screenshot (unless `shot` is None); returns (probe dict or None, problem)."
    url = page.resolve().as_uri()
    probe, err = None, ''
    with tempfile.TemporaryDirectory(prefix='site-check-chromium-') as prof:
        base = [chromium(), *CHROMIUM_FLAGS, f'--user-data-dir={prof}', f'--virtual-time-budget={budget_ms}']
        try:
            r = subprocess.run(base + ['--window-size=1280,2400', '--dump-dom', url],  # same width as the screenshot
                               capture_output=True, text=True, timeout=timeout)
            m = re.search(r'data-site-check="([^"]*)"', r.stdout)
            if m: probe = json.loads(unescape(m.group(1)))
            else: err = 'no probe in the DOM (page did not finish loading?) ' + r.stderr.strip()[-300:]
        except subprocess.TimeoutExpired: err = f'chromium --dump-dom timed out after {timeout}s'
    if shot is None: return probe, err
    # whole page in one picture (capped), so every figure and formula can be looked at
    height = min(max(int((probe or {}).get('height') or 2400), 800), 16000)
    with tempfile.TemporaryDirectory(prefix='site-check-chromium-') as prof:
        shot.parent.mkdir(parents=True, exist_ok=True)
        cmd = [chromium(), *CHROMIUM_FLAGS, f'--user-data-dir={prof}', f'--virtual-time-budget={budget_ms}',
               f'--window-size=1280,{height}', f'--screenshot={shot}', url]
        try: subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired: err = err or 'screenshot timed out'
    if not shot.exists(): err = err or 'no screenshot written'
    return probe, err


# ---------------------------------------------------------------- step 5: assertions
def problems(info: dict, probe: dict | None, note: str) -> list[str]:
    p = []
    if any(k in note for k in ('TIMEOUT', 'child failed', 'execution stopped')): p.append(note.split('; ', 1)[-1])
    p += [f'error output: {e}' for e in info['errors']]
    if probe is None: return p + ['no result from the browser']
    if info['math'] and not probe.get('mathjax'): p.append('MathJax did not load')
    if probe.get('merror') or probe.get('mjx_error') or probe.get('processing_error') or probe.get('undefined_macro'):
        p.append(f"MathJax errors: merror={probe.get('merror')} error={probe.get('mjx_error')} "
                 f"undefined={probe.get('undefined_macro')} processing_error={probe.get('processing_error')}")
    if probe.get('scripts', 0) != probe.get('rendered', 0):
        p.append(f"MathJax typeset {probe.get('rendered')} of {probe.get('scripts')} formulas")
    if info['math'] and probe.get('scripts', 0) < info['math']:
        p.append(f"{info['math']} formulas in the markdown, MathJax found {probe.get('scripts')}")
    imgs = probe.get('imgs', [])
    good = [i for i in imgs if i['data'] and i['n'] > 200 and i['w'] > 0 and i['h'] > 0]
    if len(good) < info['images']:
        p.append(f"{info['images']} image outputs in the notebook, {len(good)} decoded <img> in the page "
                 f"({len(imgs)} <img> in outputs)")
    if probe.get('traceback') and not info['errors']: p.append('"Traceback" text in the page')
    return p


def write_back(args) -> int:
    "Execute every chapter and put the executed notebook in place of nbs/<chapter>.ipynb (for nbdev_docs in CI)."
    args.no_execute = False
    failed = 0
    for src in chapters_to_check(args.only):
        _, dt, note = execute_chapter(src, args)
        ok = not any(k in note for k in ('TIMEOUT', 'child failed', 'execution stopped'))
        if ok: shutil.copy2(RENDER / 'executed' / src.name, src)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {src.stem:24s} {dt:6.1f}s  {note}")
    print(f'write-back: {failed} chapters failed' if failed else 'write-back: nbs/ now holds executed notebooks')
    return 1 if failed else 0


def main(argv=None):
    import warnings; warnings.filterwarnings('ignore', message='Cell is missing an id field')
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--no-execute', action='store_true', help='reuse _render/executed/ copies (else stored outputs)')
    ap.add_argument('--only', nargs='+', metavar='NAME', help='chapters to check, e.g. 04_mr2')
    ap.add_argument('--timeout', type=int, default=600, help='seconds per chapter for execution')
    ap.add_argument('--cell-timeout', type=int, default=300, help='seconds per cell')
    ap.add_argument('--budget', type=int, default=20000, help="Chromium virtual time budget (ms) for MathJax")
    ap.add_argument('--jobs', type=int, default=1, help='chapters executed in parallel')
    ap.add_argument('--full', action='store_true',
                    help='execute at full sizes (no MARGIN_NOTES_SMOKE/IN_TEST); cells flagged slow/gpu stay skipped')
    ap.add_argument('--write-back', action='store_true',
                    help='only execute, then copy the executed notebooks over nbs/*.ipynb (CI site build only)')
    args = ap.parse_args(argv)
    if args.write_back: return write_back(args)
    probs = chapter_list_problems()
    for pr in probs: print(f'chapter list: {pr}')
    landed = sorted(n for n in PLANNED if (NBS / f'{n}.ipynb').exists())
    if landed: print(f"note: {', '.join(landed)} now in nbs/: remove from PLANNED in scripts/check_site.py")
    chapters = chapters_to_check(args.only)
    mathjax_url(); chromium()
    from concurrent.futures import ThreadPoolExecutor
    passed = failed = 0
    t_all = time.time()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futs = [(src, pool.submit(execute_chapter, src, args)) for src in chapters]
        for src, fut in futs:
            proc_nb, dt, note = fut.result()
            name = src.stem
            if not proc_nb.exists():
                print(f'FAIL {name:24s} {dt:6.1f}s  not processed: {note}'); failed += 1; continue
            page = RENDER / 'html' / f'{name}.html'
            info = to_html(proc_nb, page)
            probe, err = browse(page, SHOTS / f'{name}.png', args.budget, 120)
            (RENDER / 'html' / f'{name}.probe.json').write_text(json.dumps(dict(notebook=info, page=probe), indent=1))
            p = problems(info, probe, note) + ([err] if err else [])
            pr = probe or {}
            summary = (f"{dt:6.1f}s  math {pr.get('rendered', '?')}/{pr.get('scripts', '?')}  "
                       f"figures {len([i for i in pr.get('imgs', []) if i['w'] > 0])}/{info['images']}  "
                       f"doc-links {pr.get('links', '?')}  [{note.split(';')[0]}]")
            if p:
                failed += 1; print(f'FAIL {name:24s} {summary}')
                for x in p: print(f'     - {x}')
            else: passed += 1; print(f'ok   {name:24s} {summary}')
    if probs: failed += 1; print(f'FAIL chapter list ({len(probs)} problems, see above)')
    print(f'check-site took {time.time() - t_all:.0f}s; pages in {RENDER.relative_to(ROOT)}/html, '
          f'screenshots in {SHOTS.relative_to(ROOT)}/')
    print(f'check-site: {passed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--_child':
        src, dst, tmo, ex, smoke = sys.argv[2:7]
        sys.exit(_child_execute(Path(src), Path(dst), int(tmo), bool(int(ex)), bool(int(smoke))))
    sys.exit(main())
