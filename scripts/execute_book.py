#!/usr/bin/env python
"""Execute the book's chapters in the full configuration and commit-ready form (`make outputs`).

The book is committed WITH outputs (nbdev's convention; `nbdev_clean` keeps them): a reader who opens a
chapter sees the reference results next to the code, and the site (`make docs`) shows exactly these
outputs, because the docs build executes nothing. This script produces them:

1. every chapter (nbs/*.ipynb, or the ones named) runs top to bottom in a fresh Jupyter kernel (cwd nbs/,
   the repository's library first on PYTHONPATH) in the FULL configuration: MARGIN_NOTES_SMOKE and IN_TEST
   unset, MPLBACKEND unset (inline figures), MARGIN_NOTES_DATA set (default ../shared/data when it exists);
2. cells marked `#| slow` or `#| gpu` (and `#| eval: false`) are NOT executed and carry no output: their
   results live in committed results/ files, which the chapters' cheap display cells read;
3. stderr streams made only of warnings / progress bars are dropped (and logged);
4. the notebook is refused (not written, exit status 1, the cell named) when a cell raises, or an output
   holds a traceback, any other stderr stream, a smoke-run marker, or machine-specific noise (an absolute
   path of this machine, a memory address, a "data not found" message);
5. accepted notebooks are written back and passed through `nbdev_clean` (which keeps outputs).

`--check` executes nothing: it applies the refusal rules of step 4 to the committed outputs (CI uses it).

Usage: python scripts/execute_book.py [NAME ...] [--check] [--timeout S] [--long S] [--out DIR]
"""
from __future__ import annotations
import argparse, json, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
SKIP_FLAGS = ('slow', 'gpu')

# Smoke-mode output must never be committed. The library has no banner of its own, so these are the
# words a smoke run, a stand-in model or a fake/test run prints about itself.
SMOKE_RE = re.compile(r'\bsmoke[ -]?(run|mode|test|config)|\bSMOKE\b|\bstand-in\b|\bfake run', re.I)
TRACEBACK_RE = re.compile(r'Traceback \(most recent call last\)|^\s*File "[^"]+", line \d+', re.M)
# output that depends on what this machine has (a chapter must read committed files or skip silently)
MISSING_RE = re.compile(r'\b(data|dataset|data root|file|files|folder)s? (?:was |were |is |are )?(?:not found|missing)\b'
                        r'|\bnot under the data root\b|\bNo such file or directory\b', re.I)
# stderr lines that are noise (warnings, progress bars), dropped rather than published
NOISE_LINE_RE = re.compile(r'(Warning\b|warnings\.warn|^\s*warn\(|\d+%\|| it/s\]| s/it\]|^\s*$|^\s{2,}\S)')


def directives(src: str) -> dict[str, str]:
    "nbdev `#| name value` directives at the top of a cell."
    d = {}
    for line in src.splitlines():
        m = re.match(r'^\s*#\|\s*([\w-]+):?\s*(.*)$', line)
        if m: d[m.group(1)] = m.group(2).strip()
        elif line.strip(): break
    return d


def skipped(cell) -> bool:
    if cell.get('cell_type') != 'code': return False
    d = directives(''.join(cell.get('source', '')))
    return any(f in d for f in SKIP_FLAGS) or d.get('eval', '').lower() == 'false'


def output_text(o) -> str:
    if o.get('output_type') == 'stream': return ''.join(o.get('text', ''))
    if o.get('output_type') == 'error': return '\n'.join(o.get('traceback', []))
    data = o.get('data', {})
    return '\n'.join(''.join(v) if isinstance(v, list) else str(v)
                     for k, v in data.items() if k.startswith('text/'))


def machine_paths() -> list[str]:
    "Absolute paths of this machine that must not appear in published outputs."
    ps = {str(ROOT), str(Path.home())}
    if os.environ.get('MARGIN_NOTES_DATA'): ps.add(str(Path(os.environ['MARGIN_NOTES_DATA']).resolve()))
    return sorted(p for p in ps if len(p) > 4)


def where(nb_name: str, i: int, cell) -> str:
    first = next((l for l in ''.join(cell.get('source', '')).splitlines() if l.strip() and not l.startswith('#|')), '')
    return f'{nb_name} cell {i} ({first[:60]!r})'


def strip_noise(nb_name: str, nb) -> list[str]:
    "Drop stderr streams that are only warnings/progress bars; returns log lines."
    log = []
    for i, cell in enumerate(nb['cells']):
        if cell.get('cell_type') != 'code': continue
        keep = []
        for o in cell.get('outputs', []):
            if o.get('output_type') == 'stream' and o.get('name') == 'stderr':
                text = ''.join(o.get('text', ''))
                lines = [l for l in re.split(r'[\r\n]+', text) if l.strip()]
                if all(NOISE_LINE_RE.search(l) for l in lines):
                    log.append(f'  dropped stderr noise in {where(nb_name, i, cell)}: {lines[0][:100] if lines else ""!r}')
                    continue
            keep.append(o)
        cell['outputs'] = keep
    return log


def problems(nb_name: str, nb) -> list[str]:
    "Reasons to refuse this notebook's outputs (each names its cell)."
    probs, paths = [], machine_paths()
    for i, cell in enumerate(nb['cells']):
        if cell.get('cell_type') != 'code': continue
        outs = cell.get('outputs', [])
        if skipped(cell) and outs:
            probs.append(f'{where(nb_name, i, cell)}: a #| slow/#| gpu cell has committed outputs')
        for o in outs:
            t = output_text(o)
            if o.get('output_type') == 'error':
                probs.append(f'{where(nb_name, i, cell)}: error output {o.get("ename")}: {o.get("evalue", "")[:120]}')
            elif TRACEBACK_RE.search(t):
                probs.append(f'{where(nb_name, i, cell)}: output holds a traceback')
            if o.get('output_type') == 'stream' and o.get('name') == 'stderr':
                probs.append(f'{where(nb_name, i, cell)}: stderr stream: {t.strip()[:120]!r}')
            m = MISSING_RE.search(t)
            if m: probs.append(f'{where(nb_name, i, cell)}: machine-dependent message {m.group(0)!r} in the output')
            m = SMOKE_RE.search(t)
            if m: probs.append(f'{where(nb_name, i, cell)}: smoke-run marker {m.group(0)!r} in the output')
            for p in paths:
                if p in t: probs.append(f'{where(nb_name, i, cell)}: machine path {p!r} in the output'); break
            if re.search(r' at 0x[0-9a-f]{6,}', t):
                probs.append(f'{where(nb_name, i, cell)}: memory address in the output (not deterministic)')
    return probs


def full_env() -> dict:
    env = dict(os.environ)
    for k in ('MARGIN_NOTES_SMOKE', 'IN_TEST', 'MPLBACKEND'): env.pop(k, None)
    if not env.get('MARGIN_NOTES_DATA'):
        d = ROOT.parent / 'shared' / 'data'
        if d.is_dir(): env['MARGIN_NOTES_DATA'] = str(d)
    if env.get('MARGIN_NOTES_DATA'):   # the kernels run in nbs/: make a relative root absolute
        d = Path(env['MARGIN_NOTES_DATA']).resolve()
        if not d.is_dir(): print(f'execute_book: warning: the data root {d} does not exist', file=sys.stderr)
        env['MARGIN_NOTES_DATA'] = str(d)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('PYDEVD_DISABLE_FILE_VALIDATION', '1')
    return env


def execute(path: Path, timeout: int, long_s: float) -> tuple[object, list[str], list[str], float]:
    "Run one notebook; returns (nb or None, problems, notes, seconds)."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False,
                            resources={'metadata': {'path': str(path.parent)}})
    notes, t0 = [], time.time()
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            if skipped(cell):
                cell.outputs, cell.execution_count = [], None
                continue
            t = time.time()
            try: client.execute_cell(cell, i)
            except (CellExecutionError, CellTimeoutError) as e:
                msg = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip().splitlines()
                return None, [f'{where(path.stem, i, cell)} failed: {msg[-1][:200] if msg else type(e).__name__}'], notes, time.time() - t0
            dt = time.time() - t
            if dt > long_s:
                notes.append(f'  long cell: {where(path.stem, i, cell)} took {dt:.0f} s (mark it #| slow and read results/?)')
    return nb, [], notes, time.time() - t0


def nbdev_clean(path: Path):
    exe = Path(sys.executable).parent / 'nbdev_clean'
    subprocess.run([str(exe) if exe.exists() else 'nbdev_clean', '--fname', str(path)], cwd=ROOT, check=True)


def chapters(names) -> list[Path]:
    if not names: return sorted(NBS.glob('*.ipynb'))
    out = []
    for n in names:
        p = Path(n)
        if not p.suffix: p = NBS / f'{n}.ipynb'
        elif not p.is_absolute() and not p.exists(): p = NBS / p.name
        if not p.exists(): sys.exit(f'execute_book: no notebook {n!r}')
        out.append(p.resolve())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('names', nargs='*', help='chapters (e.g. 13_mr2); default: every nbs/*.ipynb')
    ap.add_argument('--check', action='store_true', help='execute nothing: check the committed outputs')
    ap.add_argument('--timeout', type=int, default=1800, help='per-cell timeout in seconds')
    ap.add_argument('--long', type=float, default=60, help='report non-slow cells that take longer (s)')
    ap.add_argument('--out', type=Path, help='write executed notebooks here instead of in place')
    a = ap.parse_args(argv)
    paths, failed, t_all = chapters(a.names), [], time.time()
    if not a.check: os.environ.clear(); os.environ.update(full_env())
    for p in paths:
        if a.check:
            nb = json.loads(p.read_text())
            probs = problems(p.stem, nb)
            if probs: failed.append(p.stem); print(f'REFUSED {p.stem}:'); print('\n'.join('  ' + x for x in probs))
            continue
        nb, probs, notes, dt = execute(p, a.timeout, a.long)
        log = strip_noise(p.stem, nb) if nb is not None else []
        if nb is not None: probs = problems(p.stem, nb)
        status = 'REFUSED' if probs else 'ok'
        print(f'{status:7s} {p.stem:28s} {dt:7.1f} s', flush=True)
        for line in log + notes + ['  ' + x for x in probs]: print(line, flush=True)
        if probs: failed.append(p.stem); continue
        import nbformat
        dst = (a.out / p.name) if a.out else p
        dst.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dst)
        nbdev_clean(dst)
    verb = 'checked' if a.check else 'executed'
    print(f'execute-book: {len(paths) - len(failed)} {verb} ok, {len(failed)} refused'
          + (f' ({", ".join(failed)})' if failed else '') + f' in {time.time() - t_all:.0f} s')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
