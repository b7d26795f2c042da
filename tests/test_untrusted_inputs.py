"""Fault injection for issue 22, "safe with files it did not make": hostile and damaged run folders, weights, caches and
configs, publication targets, names, concurrent writers, out-of-range numbers and degenerate loss inputs. Bounded:
one tiny training run (shared), everything else fails fast or is a single loss call."""
import json, os, shutil, socket, time
from pathlib import Path

import pytest
import torch

from margin_notes import engine as E
from margin_notes.cli import main
from margin_notes.config import ConfigError, validate_config, Config
from margin_notes.presets import get_config

TINY = ['epochs=1', 'model_kwargs={hidden: 16, feature_dim: 8}', 'progress=false']


class Payload:
    "A pickle that runs a shell command when loaded: creates `marker`."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "One finished (full-configuration, 1-epoch) digits run; tests copy it."
    d = tmp_path_factory.mktemp('run') / 'erm'
    E.fit(get_config('digits-lt-erm', TINY), d, verbose=False)
    return d


def copy_run(src, dst):
    shutil.copytree(src, dst); return dst


def one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for n in needles: assert n in err, err
    return err


# ------------------------------------------------------------------ 1. nothing the project reads executes code
@pytest.mark.parametrize('cmd', ['eval', 'calibrate', 'diagnose', 'resume'])
def test_planted_checkpoint_payload_never_runs(finished, tmp_path, capsys, cmd):
    d = copy_run(finished, tmp_path / 'received')
    marker = tmp_path / 'PWNED'
    torch.save({'model': {}, 'payload': Payload(marker)}, d / 'checkpoint.pt')
    if cmd == 'diagnose':
        from margin_notes.diagnose import main as diagnose_main
        rc = diagnose_main([str(d)])
    elif cmd == 'resume': rc = main(['run', 'digits-lt-erm', '--set', *TINY, '--out', str(d), '--resume'])
    elif cmd == 'calibrate': rc = main(['calibrate', str(d), '--method', 'la'])
    else: rc = main(['eval', str(d)])
    one_line_error(capsys, rc, 'checkpoint.pt', 'refused')
    assert not marker.exists()


def test_planted_weights_payload_never_runs(tmp_path):
    from margin_notes.models import load_weights
    marker, w = tmp_path / 'PWNED', tmp_path / 'weights.pt'
    torch.save({'state_dict': {}, 'payload': Payload(marker)}, w)
    cfg = Config(arch='resnet32', model_kwargs={'pretrained': str(w)}, head='linear')   # a received YAML naming the weights
    with pytest.raises(ValueError, match='refused'): E.build_model(cfg, 10, (3, 32, 32))
    with pytest.raises(ValueError, match='weights.pt: refused'): load_weights(w)      # torchvision / EfficientNet paths use it too
    assert not marker.exists()


def test_planted_cache_payloads_never_run(tmp_path):
    import pickle
    import numpy as np
    from margin_notes import data as D
    from margin_notes.models import cache_features
    marker = tmp_path / 'PWNED'
    torch.save({'classes': ['a'], 'payload': Payload(marker)}, tmp_path / 'cifar10_jpeg_uint8.pt')
    with pytest.raises(ValueError, match='decode cache'): D._load_decode_cache(tmp_path / 'cifar10_jpeg_uint8.pt')
    torch.save({'features': Payload(marker)}, tmp_path / 'feats.pt')                # the frozen-feature cache
    with pytest.raises(Exception): cache_features(torch.nn.Identity(), torch.zeros(2, 3), path=tmp_path / 'feats.pt')
    c = tmp_path / 'cifar-10-batches-py'; c.mkdir()                                     # CIFAR python batches
    x = np.zeros((1, 3072), np.uint8)
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']: (c / f).write_bytes(pickle.dumps({b'data': x, b'labels': [0]}))
    (c / 'batches.meta').write_bytes(pickle.dumps({b'label_names': [b'cat'], b'x': Payload(marker)}))
    with pytest.raises(ValueError, match='refused'): D.read_cifar_python(c)
    assert not marker.exists()


# ------------------------------------------------------------------ 2. --publish never deletes what it did not write
def test_publish_keeps_foreign_files_and_replaces_only_its_own(finished, tmp_path):
    keep = tmp_path / 'keep'; keep.mkdir(); (keep / 'notes.txt').write_text('data')
    with pytest.raises(E.RunFolderError, match='not a publication of this run'): E.publish_run(finished, keep, force=True)
    assert (keep / 'notes.txt').read_text() == 'data' and sorted(p.name for p in keep.iterdir()) == ['notes.txt']
    for up in (finished.parent, finished, Path('..'), Path('.')):                    # parents of the run or of the working folder
        with pytest.raises(E.RunFolderError, match='contains the run folder or the working folder'): E.publish_run(finished, up)
    pub = tmp_path / 'results' / 'seed0'
    E.publish_run(finished, pub)
    assert (pub / E.PUBLICATION_MARKER).exists() and (pub / 'results.json').exists()
    with pytest.raises(E.RunFolderError, match='--force'): E.publish_run(finished, pub)
    (pub / 'results.json').write_text('{}')
    E.publish_run(finished, pub, force=True)                                           # its own earlier publication: replaced
    assert json.loads((pub / 'results.json').read_text())['name'] == 'digits-lt-erm'
    assert not [p for p in pub.parent.iterdir() if p.name.startswith('.')]             # no temporary folders left


# ------------------------------------------------------------------ 3. names are names
@pytest.mark.parametrize('name', ['../../x', '/abs/path', '..', 'a/b', '.hidden'])
def test_unsafe_names_refused_at_dry_run(capsys, name):
    one_line_error(capsys, main(['run', 'digits-lt-erm', '--set', f'name={name}', '--dry-run']), 'not a safe name')


def test_unsafe_and_duplicate_suite_member_names(tmp_path, capsys):
    for members, needle in ((['../../esc'], 'not a safe name'), (['erm', 'erm'], 'appears twice')):
        p = tmp_path / 'suite.json'
        p.write_text(json.dumps({'name': 's', 'suite': [{'name': m} for m in members]}))
        one_line_error(capsys, main(['run', str(p), '--dry-run']), needle)


# ------------------------------------------------------------------ 4. one writer per run folder
def test_second_writer_refused_naming_the_holder(finished, tmp_path, capsys):
    d = copy_run(finished, tmp_path / 'busy')
    (d / E._LOCK_NAME).write_text(json.dumps({'pid': 1, 'host': socket.gethostname(), 'since': 'now'}))   # pid 1 is alive
    rc = main(['run', 'digits-lt-erm', '--set', *TINY, '--out', str(d), '--resume'])
    one_line_error(capsys, rc, 'in use by another run', 'pid 1')


def test_fresh_run_over_finished_needs_force_and_stale_tmp_is_cleaned(finished, tmp_path, capsys):
    d = copy_run(finished, tmp_path / 'again')
    one_line_error(capsys, main(['run', 'digits-lt-erm', '--set', *TINY, '--out', str(d)]), 'already holds a run', '--force')
    (d / '.checkpoint.pt.ab12cd34.tmp').write_bytes(b'half')                           # left by a killed write
    E.fit(get_config('digits-lt-erm', TINY), d, resume=True, verbose=False)           # resume of a finished run: nothing to train
    assert not (d / '.checkpoint.pt.ab12cd34.tmp').exists() and not (d / E._LOCK_NAME).exists()


# ------------------------------------------------------------------ 5. numbers range-checked, config files bounded
@pytest.mark.parametrize('ov,needle', [('grad_clip=-1', 'grad_clip'), ('grad_clip=0', 'grad_clip'), ('lr=inf', 'lr must be finite'),
                                       ('lr=1e400', 'lr must be finite'), ('epochs=0', 'epochs must be positive'),
                                       ('batch_size=0', 'batch_size'), ('min_lr=.nan', 'min_lr'), ('seed=1180591620717411303424', 'seed')])
def test_out_of_range_numbers_fail_dry_run(capsys, ov, needle):
    one_line_error(capsys, main(['run', 'digits-lt-erm', '--set', ov, '--dry-run']), needle)


def test_empty_config_and_alias_bomb(tmp_path, capsys):
    (tmp_path / 'empty.yaml').write_text('# only a comment\n')
    one_line_error(capsys, main(['run', str(tmp_path / 'empty.yaml'), '--dry-run']), 'empty.yaml is empty')
    levels = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / 'bomb.yaml').write_text('\n'.join(levels) + '\n')                   # ~600 bytes, 10**9 leaves if expanded
    t = time.time()
    one_line_error(capsys, main(['run', str(tmp_path / 'bomb.yaml'), '--dry-run']), 'aliases')
    assert time.time() - t < 5


# ------------------------------------------------------------------ 6. losses: zero class weights, MR2's floor and pair term
def test_zero_class_weights_give_zero_not_nan():
    from margin_notes.baselines import CELoss, BalancedSoftmaxLoss, LogitAdjustedLoss, LDAMLoss, FocalLoss
    from margin_notes.dbm import DBMLoss
    from margin_notes.marc import MARCLoss
    counts, w, y = [100, 10, 1], [0., 1., 1.], torch.tensor([0, 0, 0])
    losses = [CELoss(weight=w), BalancedSoftmaxLoss(counts, weight=w), LogitAdjustedLoss(counts, weight=w),
              LDAMLoss(counts, weight=w), FocalLoss(weight=w), DBMLoss(counts, weight=w)]
    for L in losses:
        x = (torch.rand(3, 3) * 2 - 1).requires_grad_()
        out = L(x, y)
        assert out.item() == 0.0, type(L).__name__
        out.backward(); assert torch.isfinite(x.grad).all() and (x.grad == 0).all(), type(L).__name__
    m = MARCLoss([1, 10 ** 6], gamma=100)                                              # underflowed weights
    assert torch.isfinite(m(torch.randn(2, 2), torch.tensor([1, 1])))


def test_mr2_floor_and_classwise_pair_term():
    from margin_notes.mr2 import MR2Loss, _rep_terms_dense, _rep_terms_classwise
    f = torch.randn(6, 4).abs(); f[:2] = 0
    L = MR2Loss(3, variant='paper', lam=0.0)
    assert L(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), features=f) < 100 and L.gammas()[0] > 0.05
    x, y = torch.randn(50, 3, dtype=torch.float64), torch.randint(0, 7, (50,))
    assert torch.allclose(_rep_terms_dense(x, y, 0.5, 1.0), _rep_terms_classwise(x, y, 0.5, 1.0), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ 7. checksums, damaged files, diagnose
@pytest.mark.parametrize('damage,needle', [('flip', 'checksum mismatch'), ('truncate', 'damaged'), ('empty', 'damaged'),
                                           ('no-model', "no 'model' entry"), ('missing', 'holds no checkpoint.pt')])
def test_damaged_checkpoint_one_line_naming_it(finished, tmp_path, capsys, damage, needle):
    d = copy_run(finished, tmp_path / 'damaged'); ck = d / 'checkpoint.pt'
    raw = bytearray(ck.read_bytes())
    if damage == 'flip':
        w = E.load_checkpoint(ck)['model']['head.weight'].contiguous().numpy().tobytes()
        raw[raw.find(w) + 7] ^= 0x10; ck.write_bytes(bytes(raw))
    elif damage == 'truncate': ck.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == 'empty': ck.write_bytes(b'')
    elif damage == 'no-model': E.save_checkpoint({'epoch': 1}, ck)
    else: ck.unlink()
    err = one_line_error(capsys, main(['eval', str(d)]), needle)
    assert str(d) in err


def test_diagnose_expected_failures_are_one_line(finished, tmp_path, capsys):
    from margin_notes.diagnose import main as diagnose_main
    one_line_error(capsys, diagnose_main([str(finished), '--bootstrap', '-1']), '--bootstrap')
    one_line_error(capsys, diagnose_main([str(tmp_path / 'nowhere')]), 'not a folder')
    d = copy_run(finished, tmp_path / 'cfg'); (d / 'config.json').write_text('[1, 2]')
    one_line_error(capsys, diagnose_main([str(d)]), 'config.json', 'mapping')


def test_cli_publish_destination_checked_before_training(tmp_path, capsys):
    keep = tmp_path / 'keep'; keep.mkdir(); (keep / 'notes.txt').write_text('data')
    rc = main(['run', 'digits-lt-erm', '--set', *TINY, '--out', str(tmp_path / 'run'), '--publish', str(keep)])
    one_line_error(capsys, rc, 'not a publication of this run')
    assert not (tmp_path / 'run').exists() and (keep / 'notes.txt').read_text() == 'data'


def test_calibrate_never_writes_over_a_training_run(finished, tmp_path, capsys):
    "calibrate --out onto the run itself or onto another training run is refused before anything is computed; option typos are named."
    run, other = copy_run(finished, tmp_path / 'run'), copy_run(finished, tmp_path / 'other')
    before = {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()}
    one_line_error(capsys, main(['calibrate', str(run), '--out', str(run)]), 'is the run being calibrated')
    one_line_error(capsys, main(['calibrate', str(run), '--out', str(other)]), 'holds a training run')
    one_line_error(capsys, main(['calibrate', str(run), '--set', 'gama=1.2']), "did you mean 'gamma'")
    assert {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()} == before
    assert main(['calibrate', str(run), '--out', str(tmp_path / 'cal')]) == 0   # a new folder is fine
