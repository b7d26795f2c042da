#!/usr/bin/env python
"""Build the book's site with Quarto into _docs/ (`make docs`), executing no chapter.

1. what `nbdev_proc_nbs` (nbdev 2.4.14) does, except rebuilding margin_notes/_modidx.py (nbdev_export does
   that; `make test` checks it is in sync): write nbs/nbdev.yml from settings.ini and copy nbs/ into a fresh
   _proc/ through nbdev's notebook processors. settings.ini skips nbdev's
   `exec_show_docs` (which executed chapter cells at docs time) and adds `docs_procs:show_doc_outputs`
   (scripts/docs_procs.py), which renders only the API `show_doc` cells from the installed library. Every
   other output on the site is the committed one (`make outputs`, scripts/execute_book.py).
2. `quarto render --no-cache` in _proc/, then _proc/_docs/ moves to _docs/.
   `--mathjax local` points MathJax at Debian's libjs-mathjax (file:///usr/share/javascript/mathjax) for a
   reader without internet; the default is Quarto's CDN MathJax, as on the published site.

3. the committed notebooks (with their outputs) are copied to _docs/notebooks/, where each page's
   "Download this notebook" link points (`docs_procs.download_link`).

Unlike `nbdev_docs`, this never regenerates README.md (scripts/make_readme.py does, from nbs/index.ipynb).

`--sync-sidebar` builds nothing: it rewrites the chapter labels of the _quarto.yml sidebar to
"NN · <the notebook's # Title>" (one title per chapter everywhere) and prints what changed;
`--check-sidebar` exits 1 if a label differs from its notebook's title.

Usage: python scripts/build_docs.py [--mathjax cdn|local] [--n-workers N] [--sync-sidebar | --check-sidebar]
"""
from __future__ import annotations
import argparse, os, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_MATHJAX = Path('/usr/share/javascript/mathjax/MathJax.js')
LOCAL_MATHJAX_URL = f'file://{LOCAL_MATHJAX}?config=TeX-AMS_CHTML-full'


def run(cmd, **kw):
    print('+ ' + ' '.join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


NBS = ROOT / 'nbs'
QUARTO_YML = ROOT / '_quarto.yml'


def notebook_title(nb: Path) -> str:
    "The `# Title` of a notebook (its first Markdown cell's first line)."
    import json
    cells = json.loads(nb.read_text(encoding='utf-8')).get('cells', [])
    md = next((c for c in cells if c.get('cell_type') == 'markdown'), None)
    first = (''.join(md['source']) if md else '').lstrip().splitlines()[:1]
    return first[0][2:].strip() if first and first[0].startswith('# ') else ''


def sidebar_label(nb: Path) -> str:
    "The sidebar text of a numbered chapter: 'NN · <the notebook's # Title>'."
    return f'{nb.stem.split("_")[0]} · {notebook_title(nb)}'


def sync_sidebar(text: str, nbs: Path = NBS) -> tuple[str, list[str]]:
    """Rewrite the `text:` line after every `- href: NN_name.ipynb` line of _quarto.yml's text to the chapter's
    label (comments and layout kept). Returns (new text, changes)."""
    import re, json
    entry = re.compile(r'^(?P<ind>[ \t]*)- href: (?P<href>\d\d_[\w-]+\.ipynb)[ \t]*\n(?P<tind>[ \t]*)text: (?P<text>.*)$', re.M)
    changes = []
    def one(m):
        nb = nbs / m.group('href')
        if not nb.exists(): return m.group(0)
        want = json.dumps(sidebar_label(nb), ensure_ascii=False)
        if m.group('text').strip() == want: return m.group(0)
        changes.append(f"{m.group('href')}: {m.group('text').strip()} -> {want}")
        return f"{m.group('ind')}- href: {m.group('href')}\n{m.group('tind')}text: {want}"
    return entry.sub(one, text), changes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--mathjax', choices=['cdn', 'local'], default=os.environ.get('MATHJAX') or 'cdn')
    ap.add_argument('--n-workers', type=int, default=2)
    ap.add_argument('--sync-sidebar', action='store_true', help="rewrite the sidebar labels from the notebooks' titles")
    ap.add_argument('--check-sidebar', action='store_true', help="exit 1 if a sidebar label differs from its title")
    a = ap.parse_args(argv)
    if a.sync_sidebar or a.check_sidebar:
        new, changes = sync_sidebar(QUARTO_YML.read_text(encoding='utf-8'))
        print('\n'.join(changes) or 'sidebar: every chapter label is "NN · <# Title>"')
        if a.sync_sidebar and changes: QUARTO_YML.write_text(new, encoding='utf-8')
        return 1 if a.check_sidebar and changes else 0
    quarto = shutil.which('quarto')
    if not quarto:
        sys.exit('build_docs: quarto is not on PATH (install Quarto, or run `make docs`, which can install it)')
    if a.mathjax == 'local' and not LOCAL_MATHJAX.exists():
        sys.exit(f'build_docs: --mathjax local needs {LOCAL_MATHJAX} (Debian: apt-get install libjs-mathjax)')
    t0 = time.time()
    env = dict(os.environ)
    # the processor module (scripts/) and this checkout's library first, in nbdev's worker processes too
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT / 'scripts'), str(ROOT)]
                                        + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    for k in ('MARGIN_NOTES_SMOKE',): env.pop(k, None)
    proc, docs = ROOT / '_proc', ROOT / '_docs'
    # nbdev copies nbs/ into _proc/ by modification time and misses changes behind the nbs/_quarto.yml symlink
    shutil.rmtree(proc, ignore_errors=True)
    # nbdev_proc_nbs minus its rebuild of margin_notes/_modidx.py (nbdev_export's job; the build writes no
    # tracked file except nbs/nbdev.yml, which is regenerated identically from settings.ini)
    run([sys.executable, '-c', 'from nbdev.quarto import refresh_quarto_yml; from nbdev.serve import proc_nbs; '
         f'refresh_quarto_yml(); proc_nbs(n_workers={a.n_workers})'], cwd=ROOT, env=env)
    t1 = time.time()
    cmd = [quarto, 'render', '--no-cache']
    if a.mathjax == 'local':
        (proc / '_quarto-mathjax-local.yml').write_text(
            'format:\n  html:\n    html-math-method:\n      method: mathjax\n'
            f'      url: "{LOCAL_MATHJAX_URL}"\n')
        cmd += ['--profile', 'mathjax-local']
    run(cmd, cwd=proc, env=env)
    t2 = time.time()
    shutil.rmtree(docs, ignore_errors=True)
    shutil.move(str(proc / docs.name), str(docs))
    # "Download this notebook": the committed notebooks, outputs included (not _proc's processed copies)
    (docs / 'notebooks').mkdir(exist_ok=True)
    for nb in sorted(NBS.glob('*.ipynb')): shutil.copy2(nb, docs / 'notebooks' / nb.name)
    # Quarto stamps sitemap.xml with render times; use the last commit's date so that equal sources give equal sites
    sm = docs / 'sitemap.xml'
    if sm.exists():
        import re
        r = subprocess.run(['git', 'log', '-1', '--format=%cd', '--date=format-local:%Y-%m-%dT%H:%M:%SZ'],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'TZ': 'UTC'})
        when = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
        sm.write_text(re.sub(r'\s*<lastmod>[^<]*</lastmod>', f'\n    <lastmod>{when}</lastmod>' if when else '',
                             sm.read_text()))
    pages = sorted(docs.glob('*.html'))
    print(f'build-docs: {len(pages)} pages in {docs.relative_to(ROOT)}/ (MathJax: {a.mathjax}); '
          f'notebook processing {t1 - t0:.0f} s, quarto render {t2 - t1:.0f} s, total {time.time() - t0:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
