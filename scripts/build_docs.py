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

Unlike `nbdev_docs`, this never regenerates README.md (scripts/make_readme.py does, from nbs/index.ipynb).

Usage: python scripts/build_docs.py [--mathjax cdn|local] [--n-workers N]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--mathjax', choices=['cdn', 'local'], default=os.environ.get('MATHJAX') or 'cdn')
    ap.add_argument('--n-workers', type=int, default=2)
    a = ap.parse_args(argv)
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
