"""`make gpu-check` (scripts/gpu_check.py): the smoke run end to end, the schema of every file, the refusal without
CUDA, the committed "not run" files, and the host-sync checker (it must really flag a syncing step)."""
import importlib.util, json, os, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'gpu_check.py'


def _load():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gc = _load()


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ('MARGIN_NOTES_SMOKE', 'IN_TEST')}
    env.setdefault('MARGIN_NOTES_DATA', str(ROOT.parent / 'shared' / 'data'))
    env.update(kw)
    return env


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu-check-smoke')
    t0 = time.time()
    r = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--out', str(out)], capture_output=True, text=True,
                       timeout=300, env=_env(), cwd=ROOT)
    return r, out, time.time() - t0


def test_smoke_run_end_to_end(smoke_run):
    r, out, wall = smoke_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert lines and all(l.startswith('[smoke stand-in]') for l in lines), 'every console line is marked'
    for p in gc.PARTS:
        doc = json.loads((out / gc.FILES[p]).read_text())
        gc.check_schema(doc, p)
        assert doc['smoke'] and doc['mode'] == 'smoke' and 'SMOKE' in doc['label']
        assert doc['status'] in ('ok', 'skipped'), (p, doc['error'])
        assert doc['provenance']['git_commit'] is None or len(doc['provenance']['git_commit']) == 40
    losses = json.loads((out / 'losses.json').read_text())
    assert losses['status'] == 'ok'
    rows = {r['name']: r for r in losses['results']['rows']}
    assert rows['erm']['ratio_to_ce'] == 1.0
    # the engine's step of every loss passes the CPU tripwire (value checks off, as on an accelerator)
    assert losses['results']['all_sync_checks_passed'], [r['sync_check'] for r in rows.values() if not r['sync_check']['passed']]
    eng = json.loads((out / 'engine.json').read_text())['results']
    assert eng['modes']['eager']['engine_images_per_s'] > 0 and eng['modes']['eager']['sync_check']['passed']
    clip = json.loads((out / 'clip.json').read_text())['results']
    assert clip['mr2_over_ce'] > 0 and 'tiny' in clip['arch']


def test_smoke_never_writes_into_results_gpu(smoke_run):
    r, out, _ = smoke_run
    assert gc.RESULTS_DIR.resolve() not in out.resolve().parents
    r2 = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--out', str(gc.RESULTS_DIR), '--parts', 'losses'],
                        capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert r2.returncode == 2 and 'never writes into results/gpu' in r2.stderr


def test_smoke_default_folder_is_temporary():
    "Without --out a smoke run writes into a new temporary folder and says where (only the quickest part here)."
    r = subprocess.run([sys.executable, str(SCRIPT), '--parts', 'clip'], capture_output=True, text=True, timeout=120,
                       env=_env(MARGIN_NOTES_SMOKE='1'), cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    where = Path(r.stdout.split('writing to ', 1)[1].split()[0])
    assert where.is_dir() and 'gpu-check-smoke-' in where.name and gc.RESULTS_DIR.resolve() not in where.parents
    assert json.loads((where / 'clip.json').read_text())['smoke']
    import shutil; shutil.rmtree(where)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the refusal is what happens without CUDA')
def test_full_run_refuses_without_cuda():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and 'CUDA is not available' in r.stderr
    assert r.stdout == ''


def test_committed_files_are_not_run_placeholders_or_gpu_measurements():
    for p in gc.PARTS:
        doc = gc.check_schema(json.loads((gc.RESULTS_DIR / gc.FILES[p]).read_text()), p)
        assert not doc['smoke'] and doc['mode'] in ('not run', 'gpu'), 'results/gpu holds GPU numbers or "not run" only'
        if doc['mode'] == 'gpu': assert doc['provenance']['device_type'] == 'cuda'
        else: assert doc['status'] == 'not run' and doc['command'] == 'make gpu-check'


def test_schema_rejects_bad_files():
    doc = gc.placeholder('losses')
    bad = {k: v for k, v in doc.items() if k != 'provenance'}
    with pytest.raises(AssertionError): gc.check_schema(bad)
    with pytest.raises(AssertionError): gc.check_schema({**doc, 'status': 'fine'})
    with pytest.raises(AssertionError): gc.check_schema({**doc, 'smoke': True})
    with pytest.raises(AssertionError): gc.check_schema(doc, 'engine')


# ------------------------------------------------------------------ the host-sync checker

class _SyncingCE(nn.Module):
    "Cross-entropy that reads a value on the host every call (a deliberate host sync on a GPU)."
    def forward(self, out, y, features=None):
        loss = F.cross_entropy(out, y)
        if loss.item() > 1e9: loss = loss * 0   # the kind of guard that syncs
        return loss


class _CleanCE(nn.Module):
    def forward(self, out, y, features=None): return F.cross_entropy(out, y)


def _engine_run(loss_fn, dev):
    "The engine's training loop (engine.train_epochs) over guarded batches, with `loss_fn`."
    from margin_notes.engine import train_epochs
    from margin_notes.models import MLPClassifier
    torch.manual_seed(0)
    model = MLPClassifier(12, 3).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(8, 12, device=dev), torch.randint(0, 3, (8,), device=dev)) for _ in range(3)]
    return gc.check_no_host_sync(lambda b: train_epochs(model, loss_fn, b, opt, lambda s: 0.01, 1), batches, dev)


def test_checker_flags_a_syncing_loss_on_cpu():
    dev = torch.device('cpu')
    bad, good = _engine_run(_SyncingCE(), dev), _engine_run(_CleanCE(), dev)
    assert bad['passed'] is False and 'Tensor.item' in bad['error'] and 'tripwire' in bad['method']
    assert good['passed'] is True and good['error'] is None and good['steps'] == 3
    # the guard is gone after the check, also after a failure: .item() works again and value checks are back on
    assert torch.tensor(2.0).item() == 2.0 and bool(torch.tensor(True))
    from margin_notes.core import _VALUE_CHECKS
    assert _VALUE_CHECKS['cpu'] is True


def test_checker_leaves_the_epoch_end_read_outside_the_guard():
    "A host read after the loop over the batches (train_epochs reads its loss sums once, .tolist()) is not a step's sync; the same read inside the loop is."
    dev = torch.device('cpu')
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    def epoch(read_in_loop):
        def run(guarded):
            total = torch.zeros(())
            for x, y in guarded:
                total = total + F.cross_entropy(x, y).detach()
                if read_in_loop: total.tolist()
            return total.tolist()                       # the epoch's one read, after the loop
        return run
    after, inside = gc.check_no_host_sync(epoch(False), batches, dev), gc.check_no_host_sync(epoch(True), batches, dev)
    assert after['passed'] is True and after['error'] is None
    assert inside['passed'] is False and 'tolist' in inside['error'], inside
    assert _engine_run(_CleanCE(), dev)['passed']          # and the engine's own loop, which reads after it


def test_checker_restores_after_an_exception_inside_the_loop():
    dev = torch.device('cpu')
    def run(b):
        for x in b: raise RuntimeError('shape mismatch (not a sync)')
    res = gc.check_no_host_sync(run, [1, 2], dev)
    assert res['passed'] is False and 'shape mismatch' in res['error']
    assert torch.tensor([1, 2]).tolist() == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA: set_sync_debug_mode only applies to CUDA tensors')
def test_checker_flags_a_syncing_loss_on_cuda():
    dev = torch.device('cuda')
    bad, good = _engine_run(_SyncingCE(), dev), _engine_run(_CleanCE(), dev)
    assert bad['passed'] is False and 'set_sync_debug_mode' in bad['method'] and 'synchroniz' in bad['error'].lower()
    assert good['passed'] is True
    assert torch.cuda.get_sync_debug_mode() == 0


def test_budget_cuts_repeats_short_and_says_so():
    "A part past its budget keeps the first round, skips the remaining repeats, and records that it did."
    S = {**gc.settings_for('smoke')['clip'], 'rounds': 3}
    res, notes = gc.part_clip(S, torch.device('cpu'), gc.Budget(0), lambda m: None, smoke=True)
    assert res['rounds_done'] == 1 and any('budget of 0 s spent: 1 of 3 rounds' in n for n in notes)
