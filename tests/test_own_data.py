"""Your own data end to end (issue 23): a generated image folder with 5 imbalanced classes in a shuffled order, trained from a
YAML config with `margin-notes run` for 3 seeds, then `report`, `diagnose`, `calibrate` and `eval` on exactly that data;
a folder that changed, a run trained from Python tensors, and typos in data_kwargs / arch / model_kwargs are refused in one line."""
import json, os
from pathlib import Path

import pytest
import torch
import yaml

from margin_notes.cli import main
from margin_notes.config import Config
from margin_notes.data import make_image_folder, load_dataset, long_tail_counts, DataBundle
from margin_notes import engine as E

# label order (sorted folder names) ash, birch, cedar, maple, oak: counts 120, 70, 20, 40, 10 -- long-tailed, not in label order
COUNTS = {'maple': 40, 'ash': 120, 'oak': 10, 'birch': 70, 'cedar': 20}
LABEL_ORDER = sorted(COUNTS)
SEEDS = (0, 1, 2)


def _cli(capsys, *argv):
    "(exit status, stdout, stderr) of the console command, in this process."
    try: rc = main([str(a) for a in argv])
    except SystemExit as e: rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A generated folder, a YAML config for it, and the three seeds trained through the CLI."
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp('own_data')
    mp.setenv('MARGIN_NOTES_CACHE', str(root / 'cache')); mp.setenv('MARGIN_NOTES_NO_PROGRESS', '1')
    folder = make_image_folder(root / 'trees', COUNTS, test_per_class=10, size=12, seed=0)
    cfg = dict(name='trees', dataset='folder', data_kwargs={'root': str(folder)}, arch='small-cnn', loss='erm', epochs=2,
               batch_size=32, lr=0.05, schedule='cosine', warmup_epochs=0, augment='none', device='cpu', report={'many': 50, 'few': 15})
    (root / 'trees.yaml').write_text(yaml.safe_dump(cfg))
    logs = {}
    import contextlib, io
    for s in SEEDS:
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            rc = main(['run', str(root / 'trees.yaml'), '--set', f'seed={s}', '--out', str(root / 'runs' / f'seed{s}')])
        logs[s] = (rc, o.getvalue(), e.getvalue())
    yield dict(root=root, folder=folder, yaml=root / 'trees.yaml', runs=[root / 'runs' / f'seed{s}' for s in SEEDS], logs=logs)
    mp.undo()


def test_cli_run_trains_on_the_folder(world):
    for s in SEEDS:
        rc, out, err = world['logs'][s]
        assert rc == 0, err
        assert 'trees epoch 1/2' in out and 'trees epoch 2/2' in out   # one progress line per epoch, no terminal needed
        res = json.loads((world['runs'][s] / 'results.json').read_text())
        assert res['class_counts'] == [COUNTS[c] for c in LABEL_ORDER] and res['num_classes'] == 5
    rec = json.loads((world['runs'][0] / 'data.json').read_text())
    assert rec['rebuildable'] and rec['dataset'] == 'folder' and rec['root'] == str(world['folder'].resolve())
    assert rec['files'] == sum(COUNTS.values()) + 5 * 10 and len(rec['fingerprint']) == 16 and rec['classes'] == LABEL_ORDER
    assert len(list((world['root'] / 'cache' / 'image_folders').glob('*.npz'))) == 1   # decoded once for the three runs


def test_report_shows_every_seed(world, capsys):
    rc, out, err = _cli(capsys, 'report', *world['runs'], '--out', world['root'] / 'report')
    assert rc == 0, err
    rows = [l for l in out.splitlines() if l.startswith('| trees ') or l.startswith('| seed')]
    # one row of mean ± std over the 3 runs (chapter 09's seed aggregation), or one row per run; never fewer runs than trained
    assert (len(rows) == 1 and ' 3 |' in rows[0] and '±' in rows[0]) or len(rows) == 3, out
    assert (world['root'] / 'report' / 'report.md').is_file()


def test_diagnose_reports_the_folders_own_counts(world, capsys):
    rc, out, err = _cli(capsys, 'diagnose', world['runs'][0], '--bootstrap', 20)
    assert rc == 0, err
    d = json.loads((world['runs'][0] / 'diagnose' / 'diagnose.json').read_text())
    assert [(r['class'], r['count'], r['test']) for r in d['per_class']] == [(c, COUNTS[c], 10) for c in LABEL_ORDER]


def test_calibrate_and_eval_use_the_same_data(world, capsys):
    rc, out, err = _cli(capsys, 'calibrate', world['runs'][1], '--method', 'la')
    assert rc == 0, err
    cal = world['runs'][1].with_name('seed1-la')
    assert json.loads((cal / 'data.json').read_text()) == json.loads((world['runs'][1] / 'data.json').read_text())
    rc, out, err = _cli(capsys, 'eval', world['runs'][1], '--json')
    assert rc == 0, err
    assert json.loads(out)['class_counts'] == [COUNTS[c] for c in LABEL_ORDER]


def test_changed_folder_is_refused_in_one_line(world, capsys):
    extra = world['folder'] / 'train' / 'oak' / 'extra.png'
    (world['folder'] / 'train' / 'oak' / '0000.png').rename(extra)   # a renamed image: another file list, same pixels
    try:
        for argv in (['eval', world['runs'][2]], ['diagnose', world['runs'][2]], ['calibrate', world['runs'][2]],
                     ['run', world['yaml'], '--set', 'seed=2', '--out', world['runs'][2], '--resume']):
            rc, out, err = _cli(capsys, *argv)
            assert rc == 2, (argv, out, err)
            assert len(err.strip().splitlines()) == 1 and 'changed since it was trained' in err, err
    finally: extra.rename(world['folder'] / 'train' / 'oak' / '0000.png')
    rc, out, err = _cli(capsys, 'eval', world['runs'][2])   # the files back as they were: the run evaluates again
    assert rc == 0, err


def test_missing_folder_is_refused_in_one_line(world, capsys):
    moved = world['folder'].with_name('trees-moved')
    world['folder'].rename(moved)
    try:
        rc, out, err = _cli(capsys, 'eval', world['runs'][0])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and 'cannot rebuild the data of' in err, err
    finally: moved.rename(world['folder'])


@pytest.mark.parametrize('override,needle', [
    ('data_kwargs.ordr=count', "data_kwargs.ordr: dataset 'folder' takes no option 'ordr'; did you mean 'order'?"),
    ('data_kwargs.max_per_clas=5', "did you mean 'max_per_class'?"),
    ('arch=small-cn', "arch: unknown architecture 'small-cn'; did you mean 'small-cnn'?"),
    ('model_kwargs.widht=[8]', "model_kwargs.widht: SmallCNN has no option 'widht'; did you mean 'widths'?"),
    ('data_kwargs.root=no/such/folder', "data_kwargs.root: no folder no/such/folder"),
])
def test_typos_fail_the_dry_run_with_a_suggestion(world, capsys, override, needle):
    rc, out, err = _cli(capsys, 'run', world['yaml'], '--set', override, '--dry-run')
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_fit_from_python_with_a_profile(world, tmp_path):
    "`engine.fit(cfg)`: the long-tail profile (IF 6, head chosen by a seeded shuffle) is applied to the folder's training split."
    cfg = Config(name='trees-lt', dataset='folder', imbalance_factor=6.0, subsample_seed=3, data_kwargs={'root': str(world['folder']), 'order': 'shuffle'},
                 arch='small-cnn', epochs=1, batch_size=32, augment='none', device='cpu', warmup_epochs=0, progress=False)
    res = E.fit(cfg, tmp_path / 'lt', verbose=False)
    b = load_dataset('folder', root=world['folder'], imbalance_factor=6.0, subsample_seed=3, order='shuffle')
    assert res['class_counts'] == b.class_counts == long_tail_counts([COUNTS[c] for c in LABEL_ORDER], 6.0, 'shuffle', 3)[0]
    assert b.info['class_rank'] != [0, 1, 2, 3, 4] and b.class_counts != [COUNTS[c] for c in LABEL_ORDER] and E.evaluate_run(tmp_path / 'lt')['class_counts'] == b.class_counts


def test_a_run_on_python_tensors_asks_for_its_data(world, tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3; x = (torch.rand(60, 1, 6, 6, generator=g) * 80 + 60 * y[:, None, None, None]).to(torch.uint8)
    mine = DataBundle('mine', 'my tensors', x, y, x[:30], y[:30], 3, ['a', 'b', 'c'], (0.3,), (0.2,))
    cfg = Config(name='mine', dataset='digits', arch='small-cnn', epochs=1, batch_size=16, device='cpu', augment='none', progress=False)
    E.fit(cfg, tmp_path / 'mine', data=mine, verbose=False)
    assert json.loads((tmp_path / 'mine' / 'data.json').read_text())['rebuildable'] is False
    for cmd in ('eval', 'diagnose', 'calibrate'):   # never the built-in digits of the config's `dataset`
        rc, out, err = _cli(capsys, cmd, tmp_path / 'mine')
        assert rc == 2 and len(err.strip().splitlines()) == 1 and 'trained on data passed from Python' in err, (cmd, err)
    assert E.evaluate_run(tmp_path / 'mine', data=mine)['class_counts'] == [20, 20, 20]


def test_suite_members_print_progress_lines(world, tmp_path, capsys):
    suite = yaml.safe_load(world['yaml'].read_text())
    suite.update(name='trees-suite', epochs=1, suite=[{'name': 'erm', 'loss': 'erm'}, {'name': 'bs', 'loss': 'bs'}])
    (tmp_path / 's.yaml').write_text(yaml.safe_dump(suite))
    rc, out, err = _cli(capsys, 'run', tmp_path / 's.yaml', '--out', tmp_path / 'suite')
    assert rc == 0, err
    assert 'trees-suite-erm epoch 1/1' in out and 'trees-suite-bs epoch 1/1' in out
