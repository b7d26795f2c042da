#!/usr/bin/env python
"""nbdev's docs pre-processing without Quarto (`make docs` where Quarto is missing).

`nbdev_docs` = `nbdev_proc_nbs` (export the doc-link index, write nbs/nbdev.yml, copy nbs/ to _proc/ and run
nbdev's notebook processors on every notebook) + `quarto render`. `nbdev_proc_nbs` first calls
`nbdev.quarto._ensure_quarto()`, which tries to download and install Quarto. Offline this script replaces
that one call with a no-op, runs the rest of `nbdev_proc_nbs` unchanged, and checks its result:

- _proc/_quarto.yml exists and is the top-level _quarto.yml (nbs/_quarto.yml is a symlink to it; the copy
  in _proc/ must carry the content), and _proc/nbdev.yml and _proc/styles.css exist;
- every nbs/*.ipynb has a processed copy in _proc/ with nbdev's frontmatter (a title) and without
  `#| export` directives left over;
- the chapter list: every chapter in the _quarto.yml sidebar exists in nbs/ (unless PLANNED in
  scripts/check_site.py), every nbs/*.ipynb is listed (unless HIDDEN), no two chapters render to one page.

Usage: python scripts/proc_nbs_offline.py [--force] [--n-workers N]
"""
from __future__ import annotations
import argparse, json, re, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
sys.path.insert(1, str(ROOT))  # the library, also in nbdev's worker processes, without `pip install -e .`
from check_site import chapter_list_problems, quarto_config  # noqa: E402


def run_proc_nbs(force: bool = False, n_workers: int = 2) -> Path:
    import os
    os.chdir(ROOT)
    import nbdev.quarto as nq
    nq._ensure_quarto = lambda: None  # offline: nbdev would download Quarto here; nothing else changes
    # not nbdev_proc_nbs(force=True): `force` would also reach nbdev_sidebar and write nbs/sidebar.yml
    # despite custom_sidebar = True; a fresh _proc/ is the same rebuild
    if force: shutil.rmtree(ROOT / '_proc', ignore_errors=True)
    nq.nbdev_proc_nbs.__wrapped__(n_workers=n_workers)
    return ROOT / '_proc'


def check_proc(proc: Path) -> list[str]:
    probs = []
    top = ROOT / '_quarto.yml'
    link = ROOT / 'nbs' / '_quarto.yml'
    if not link.is_symlink() or link.resolve() != top.resolve():
        probs.append('nbs/_quarto.yml is not a symlink to the top-level _quarto.yml')
    q = proc / '_quarto.yml'
    if not q.exists(): probs.append('_proc/_quarto.yml is missing (the symlinked config was not carried)')
    elif q.read_text() != top.read_text(): probs.append('_proc/_quarto.yml differs from the top-level _quarto.yml')
    else:
        cfg = quarto_config(q)
        if cfg.get('project', {}).get('type') != 'website': probs.append('_proc/_quarto.yml: project type is not website')
        for f in cfg.get('metadata-files', []):
            if not (proc / f).exists(): probs.append(f'_proc/{f} (a metadata-file of _quarto.yml) is missing')
        css = cfg.get('format', {}).get('html', {}).get('css')
        if css and not (proc / css).exists(): probs.append(f'_proc/{css} is missing')
        for f in cfg.get('filters', []):
            if isinstance(f, str) and f.endswith('.lua') and not (proc / f).exists():
                probs.append(f'_proc/{f} (a filter of _quarto.yml) is missing')
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        p = proc / nb.name
        if not p.exists(): probs.append(f'_proc/{nb.name} is missing'); continue
        d = json.loads(p.read_text())
        cells = d.get('cells', [])
        first = ''.join(cells[0]['source']) if cells else ''
        if not (cells and cells[0]['cell_type'] == 'raw' and first.startswith('---') and '\ntitle:' in first):
            probs.append(f'_proc/{nb.name}: no frontmatter with a title (does the notebook start with "# Title"?)')
        left = [i for i, c in enumerate(cells) if c['cell_type'] == 'code'
                and any(l.replace(' ', '').startswith(('#|export', '#|default_exp')) for l in ''.join(c['source']).splitlines())]
        if left: probs.append(f'_proc/{nb.name}: export directives left in cells {left}')
    return probs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--force', action='store_true', help='rebuild _proc/ from scratch')
    ap.add_argument('--n-workers', type=int, default=2)
    args = ap.parse_args(argv)
    try: proc = run_proc_nbs(args.force, args.n_workers)
    except Exception as e:
        msg = str(e).strip().splitlines()
        print(f'FAIL nbdev processing: {type(e).__name__}: {msg[0] if msg else ""}')
        if len(msg) > 1: print('  cell: ' + '\n        '.join(msg[1:8]))
        cause = e.__cause__ or e.__context__
        if cause:  # from nbdev's worker process: the original error is the last "...Error: ..." line
            errs = [l for l in str(cause).splitlines() if re.match(r'^\w+(Error|Exception): ', l)]
            print(f'  cause: {errs[-1] if errs else type(cause).__name__}')
        print('  (nbdev executes every cell holding an import, every #| export cell and every show_doc while it '
              'builds the docs: keep imports in cells of their own, see the nbdev FAQ on "cells containing imports '
              'and other code")')
        return 1
    probs = chapter_list_problems() + check_proc(proc)
    n = len(list(proc.glob('*.ipynb')))
    for p in probs: print(f'FAIL {p}')
    if probs: print(f'proc_nbs_offline: {len(probs)} problems'); return 1
    print(f'proc_nbs_offline: _proc/ holds {n} processed notebooks, _quarto.yml carried, chapter list consistent '
          f'(Quarto would now render _proc/ into _docs/)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
