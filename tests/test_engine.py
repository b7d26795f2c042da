"Tests of margin_notes.engine: config round trips, presets, batches, fit/resume, DRW, post-hoc, suites."
import csv, json, math, os
from pathlib import Path

import numpy as np
import pytest
import torch

from margin_notes import engine as E
from margin_notes.config import Config, apply_overrides
from margin_notes.presets import PRESETS, get_config
from margin_notes.engine import fit, build_loss   # lr schedules: tests/test_schedules.py
from margin_notes.config import ConfigError, resolve, validate_config

os.environ.setdefault('MARGIN_NOTES_NO_PROGRESS', '1')


def tiny(name='digits-lt-erm', *ov):
    "A short digits run (a few epochs, small network)."
    return get_config(name, ['epochs=2', 'model_kwargs={hidden: 32, feature_dim: 16}', 'progress=false', *ov])


# ---------------------------------------------------------------- config
def test_config_roundtrip_json_yaml(tmp_path):
    c = apply_overrides(Config(), ['loss=mr2', 'loss_kwargs.lam=0.25', 'lwr={threshold: 0.4}', 'amp=null', 'milestones=[3, 4]'])
    assert c.loss_kwargs == {'lam': 0.25} and c.lwr == {'threshold': 0.4} and c.amp is None and c.milestones == [3, 4]
    for suf in ('.json', '.yaml'):
        c.save(tmp_path / f'c{suf}')
        assert Config.load(tmp_path / f'c{suf}') == c


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="'lernrate'"): apply_overrides(Config(), ['lernrate=0.1'])
    with pytest.raises(ConfigError, match="'epoch'.*did you mean 'epochs'"): apply_overrides(Config(), ['epoch=3'])
    with pytest.raises(ConfigError, match="'foo'"): Config.from_dict({'foo': 1})
    with pytest.raises(ConfigError, match='key=value'): apply_overrides(Config(), ['epochs'])
    with pytest.raises(ConfigError, match='cifar100-r32-mr2'): get_config('cifar100-r32-mr')


def test_override_value_types():
    c = apply_overrides(Config(), ['epochs=7', 'lr=3e-5', 'channels_last=true', 'posthoc=marc', 'name=x=y'])
    assert (c.epochs, c.lr, c.channels_last, c.posthoc, c.name) == (7, 3e-5, True, 'marc', 'x=y')
    assert isinstance(c.epochs, int) and isinstance(c.lr, float)


def test_required_presets_exist_and_document_a_source():
    need = ['cifar100-r32-erm', 'cifar100-r32-mr2', 'cifar100-r32-ldam', 'cifar10lt100-r32-marc', 'cifar100lt100-r32-bs-lwr',
            'imagenetlt-r50-bs-lwr', 'imagenetlt-r50-bs', 'imagenetlt-x50-marc', 'imagenet-clip-rn50-mr2', 'digits-lt']
    need += [f'cifar{k}lt100-r32-{m}' for k in (10, 100) for m in ('erm', 'ldam-drw', 'bs', 'la', 'dbm', 'bs-lwr', 'mr2', 'marc')]
    need += [f'cifar10jpeglt100-r32-{m}' for m in ('erm', 'marc', 'dbm', 'lwr', 'mr2')]
    for n in need:
        assert n in PRESETS, n
        assert PRESETS[n].name == n and len(PRESETS[n].source) > 20
    clip = PRESETS['imagenet-clip-rn50-mr2']
    assert (clip.optimizer, clip.lr, clip.weight_decay, clip.epochs, clip.batch_size) == ('adamw', 3e-5, 0.1, 10, 512)
    ldam = PRESETS['cifar10lt100-r32-ldam-drw']
    assert (resolve(ldam).head, ldam.loss, resolve(ldam).drw_start, resolve(ldam).milestones, ldam.lr, ldam.weight_decay) == ('cosine', 'ldam-drw', 160, (160, 180), 0.1, 2e-4)
    assert resolve(PRESETS['cifar100lt100-r32-dbm']).method.loss_kwargs.get('base', 'ce') == 'ce'   # DBM presets: DBM-CE
    assert '§' not in json.dumps({n: p.to_dict() for n, p in PRESETS.items()})


def test_marc_preset_epochs_match_iteration_budget():
    # 13,000 iterations at batch 512 on the LT training set, counted independently
    for K, IF in ((10, 100), (100, 100), (100, 200)):
        n = sum(int((50000 // K) * (1 / IF) ** (i / (K - 1))) for i in range(K))
        ipe = -(-n // 512)
        assert PRESETS[f'cifar{K}lt{IF}-r32-marc'].epochs == -(-13000 // ipe)


@pytest.mark.parametrize('name', [n for n, p in PRESETS.items() if not p.suite])
def test_every_preset_builds_its_loss(name):
    "Every preset's loss name and keyword arguments fit the real loss modules."
    cfg = PRESETS[name]
    K = 1000 if 'imagenet' in cfg.dataset else (100 if '100' in cfg.dataset.replace('lt100', '') and 'cifar100' in cfg.dataset else 10)
    from margin_notes.data import cifar_lt_counts
    counts = cifar_lt_counts(K, 100, n_max=500, min_count=1)
    validate_config(cfg)
    model = torch.nn.Module(); model.head = torch.nn.Linear(16, K)
    loss = build_loss(cfg, counts, model)
    if hasattr(loss, 'set_progress'): loss.set_progress(0.0)     # what the trainer does before the first step (LWR)
    r = resolve(cfg)
    out = torch.randn(8, K).clamp(-1, 1) if r.head == 'cosine' else torch.randn(8, K)
    val = loss(out, torch.randint(0, K, (8,)), features=torch.randn(8, 16))
    assert val.dim() == 0 and torch.isfinite(val)
    if r.drw_start is not None: loss.set_class_weight(torch.ones(K))


def test_cosine_losses_need_cosine_head():
    with pytest.raises(ValueError, match="head='cosine'"): validate_config(Config(loss='ldam', head='linear'))
    with pytest.raises(ValueError, match='unscaled cosines'): validate_config(Config(loss='bs', head='cosine'))


def test_drw_methods_default_to_80_percent_of_the_run():
    assert resolve(Config(loss='ldam-drw', epochs=50)).drw_start == 40
    assert resolve(Config(loss='ldam', epochs=50)).drw_start is None
    assert resolve(Config(loss='bs', drw_start=3)).drw_start == 3


def test_drw_start_follows_the_length_of_the_run():
    "Every 200-epoch DRW preset starts DRW at epoch 160 as in the paper (ImageNet-LT's 90 epochs: 72); shortened with --set epochs=10 it still switches on (epoch 8)."
    drw_presets = [n for n, p in PRESETS.items() if not p.suite and resolve(p).method.drw and p.dataset != 'digits']
    assert drw_presets
    for n in drw_presets:
        p = PRESETS[n]
        assert p.drw_start is None and resolve(p).drw_start == {200: 160, 90: 72}[p.epochs], n   # 80 % of the run
        short = get_config(n, ['epochs=10'])
        validate_config(short)
        assert resolve(short).drw_start == 8, n
    assert resolve(get_config('digits-lt-ldam-drw')).drw_start == 32          # 0.8 of 40 epochs
    with pytest.raises(ValueError, match='drw_start=160 is not before the end of the run'):
        validate_config(get_config('cifar10lt100-r32-ldam-drw', ['epochs=10', 'drw_start=160']))
    with pytest.raises(ValueError, match='drw_start=1 is not before the end of the run'):
        validate_config(tiny('digits-lt-erm', 'drw_start=1', 'epochs=1'))


# ---------------------------------------------------------------- batches
def test_shards_partition_the_global_batch():
    d = E.load_data(Config(dataset='synthetic-cifar5', data_kwargs={'n_max': 10, 'test_per_class': 1, 'size': 4}))
    cfg = Config(batch_size=10, augment='none')
    one = list(E.make_batches(d, cfg, 'cpu', True, torch.Generator().manual_seed(1)))
    parts = [list(E.make_batches(d, cfg, 'cpu', True, torch.Generator().manual_seed(1), rank=r, world=2)) for r in (0, 1)]
    assert len(one) == 5
    for (x1, y1), (xa, ya), (xb, yb) in zip(one, *parts):
        assert torch.equal(torch.cat([ya, yb]), y1) and torch.equal(torch.cat([xa, xb]), x1)
    seen = torch.cat([b for _, b in one])
    assert torch.bincount(seen).tolist() == [10] * 5   # one epoch = a permutation (nothing dropped here)


def test_augmented_shards_equal_the_augmented_global_batch():
    d = E.load_data(Config(dataset='synthetic-cifar3', data_kwargs={'n_max': 12, 'test_per_class': 1, 'size': 8}))
    cfg = Config(batch_size=8, augment='crop-flip', pipeline='gpu')
    mk = lambda r, w: list(E.make_batches(d, cfg, 'cpu', True, torch.Generator().manual_seed(2), rank=r, world=w))
    one, a, b = mk(0, 1), mk(0, 2), mk(1, 2)
    assert len(one) == 36 // 8
    for (x1, y1), (xa, ya), (xb, yb) in zip(one, a, b):
        assert torch.equal(torch.cat([xa, xb]), x1) and torch.equal(torch.cat([ya, yb]), y1)
    # and augmentation does something: two epochs give different crops of the same images
    plain = list(E.make_batches(d, cfg.replace(augment='none'), 'cpu', True, torch.Generator().manual_seed(2)))
    assert any(not torch.equal(x1, x0) for (x1, _), (x0, _) in zip(one, plain))


def test_gpu_pipeline_matches_torchvision_pipeline_without_augmentation():
    d = E.load_data(Config(dataset='synthetic-cifar4', smoke=True))
    cfg = Config(batch_size=8, augment='none', num_workers=0)
    a = E.make_batches(d, cfg.replace(pipeline='gpu'), 'cpu', False)
    b = E.make_batches(d, cfg.replace(pipeline='dataloader'), 'cpu', False)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=1e-5)
    # training order is the same global permutation in both pipelines
    ta = E.make_batches(d, cfg.replace(pipeline='gpu'), 'cpu', True, torch.Generator().manual_seed(4))
    tb = E.make_batches(d, cfg.replace(pipeline='dataloader'), 'cpu', True, torch.Generator().manual_seed(4))
    assert [y.tolist() for _, y in ta] == [y.tolist() for _, y in tb]


def test_digits_subset_depends_on_subsample_seed_only():
    a, b = E.load_data(Config(imbalance_factor=20)), E.load_data(Config(imbalance_factor=20, seed=9))
    c = E.load_data(Config(imbalance_factor=20, subsample_seed=9))
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    assert a.class_counts == c.class_counts and torch.bincount(a.train_y).tolist() == a.class_counts
    assert a.class_counts[0] / a.class_counts[-1] == pytest.approx(20, rel=0.1)
    assert torch.bincount(a.test_y).tolist() == [50] * 10
    # the one digits split: the last `test_per_class` images of each class in file order are the test set
    d = E.load_data(get_config('digits-lt-erm'))
    assert torch.bincount(d.test_labels).tolist() == [25] * 10 and sum(d.class_counts) == len(d.train_labels)


# ---------------------------------------------------------------- fit
def test_fit_writes_outputs(tmp_path):
    r = fit(tiny(), tmp_path / 'r', verbose=False)
    files = sorted(p.name for p in (tmp_path / 'r').iterdir())
    assert files == ['checkpoint.pt', 'config.json', 'data.json', 'metrics.csv', 'predictions.npz', 'results.json']   # no temporaries left
    pr = np.load(tmp_path / 'r' / 'predictions.npz')   # per-image predictions agree with the per-class accuracy
    acc = [float((pr['pred'][pr['labels'] == k] == k).mean()) for k in range(10)]
    assert acc == pytest.approx(json.loads((tmp_path / 'r' / 'results.json').read_text())['per_class_accuracy'])
    saved = json.loads((tmp_path / 'r' / 'results.json').read_text())
    assert saved['reported'] == 'last epoch' and len(saved['per_class_accuracy']) == 10
    assert saved['report']['overall'] == pytest.approx(np.mean(saved['per_class_accuracy']))
    assert Config.from_dict(saved['config']) == tiny()
    rows = list(csv.DictReader(open(tmp_path / 'r' / 'metrics.csv')))
    assert [int(r['epoch']) for r in rows] == [1, 2] and all(float(r['train_loss']) > 0 for r in rows)
    # the per-class accuracy is that of the model in the checkpoint
    ev = E.evaluate_run(tmp_path / 'r', device='cpu')
    assert ev['per_class_accuracy'] == saved['per_class_accuracy']


def _ckpt(p): return E.load_checkpoint(p / 'checkpoint.pt')   # weights_only, checksum checked


@pytest.mark.parametrize('name,extra', [('digits-lt-mr2', []), ('digits-lt-bs', ['drw_start=1']), ('digits-lt-bs-lwr', [])])
def test_resume_is_exact(tmp_path, name, extra):
    cfg = tiny(name, *extra)
    fit(cfg, tmp_path / 'a', verbose=False)
    fit(cfg, tmp_path / 'b', stop_after=1, verbose=False)
    assert _ckpt(tmp_path / 'b')['epoch'] == 1
    fit(cfg, tmp_path / 'b', resume=True, verbose=False)
    a, b = _ckpt(tmp_path / 'a'), _ckpt(tmp_path / 'b')
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    assert a['loss'].keys() == b['loss'].keys()
    for k in a['loss']: assert torch.equal(a['loss'][k], b['loss'][k]), k
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(sa['momentum_buffer'], sb['momentum_buffer'])


def test_resume_differs_from_restart_without_state(tmp_path):
    "Control: continuing without the saved RNG/optimizer state does not give the same weights (the test above can fail)."
    cfg = tiny('digits-lt-erm')
    fit(cfg, tmp_path / 'a', verbose=False)
    fit(cfg, tmp_path / 'b', stop_after=1, verbose=False)
    ck = _ckpt(tmp_path / 'b'); ck.pop('rng'); ck['optimizer']['state'] = {}
    E.save_checkpoint({**ck, 'rng': E._rng_state(torch.Generator().manual_seed(123))}, tmp_path / 'b' / 'checkpoint.pt')
    fit(cfg, tmp_path / 'b', resume=True, verbose=False)
    a, b = _ckpt(tmp_path / 'a'), _ckpt(tmp_path / 'b')
    assert any(not torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_training_seed_changes_weights_not_data(tmp_path):
    fit(tiny(), tmp_path / 'a', verbose=False); fit(tiny('digits-lt-erm', 'seed=1'), tmp_path / 'b', verbose=False)
    a, b = _ckpt(tmp_path / 'a'), _ckpt(tmp_path / 'b')
    assert any(not torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    ra = json.loads((tmp_path / 'a' / 'results.json').read_text()); rb = json.loads((tmp_path / 'b' / 'results.json').read_text())
    assert ra['class_counts'] == rb['class_counts']


def test_drw_switches_class_weights(tmp_path):
    from margin_notes.baselines import drw_weights
    cfg = tiny('digits-lt-erm', 'drw_start=1', 'epochs=2')
    fit(cfg, tmp_path / 'r', verbose=False)
    w = _ckpt(tmp_path / 'r')['loss']['weight']
    counts = json.loads((tmp_path / 'r' / 'results.json').read_text())['class_counts']
    torch.testing.assert_close(w, drw_weights(counts, 0.9999).float())
    fit(cfg, tmp_path / 's', stop_after=1, verbose=False)   # stopped before the switch epoch
    assert _ckpt(tmp_path / 's')['loss'].get('weight') is None


def test_no_host_sync_per_training_step(tmp_path, monkeypatch):
    "The number of host reads per epoch (the Python-level reads counted below) does not grow with the number of steps."
    import margin_notes.core as core
    monkeypatch.setattr(core, '_check_values', lambda t: False)   # the library's value checks read CPU tensors on purpose
    import sys, importlib
    for mod in ('baselines', 'mr2', 'stats', 'lwr', 'dbm', 'margins'): importlib.import_module(f'margin_notes.{mod}')
    for name, m in list(sys.modules.items()):
        if name.startswith('margin_notes') and hasattr(m, '_check_values'): monkeypatch.setattr(m, '_check_values', lambda t: False)
    counts = {}
    def counting(name, orig):
        def f(self, *a, **k):
            counts[name] = counts.get(name, 0) + 1
            return orig(self, *a, **k)
        return f
    for name in ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__', 'cpu', 'numpy', 'nonzero'):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    d = E.load_data(tiny('digits-lt-mr2'))
    totals = []
    for bs in (128, 16):
        counts.clear()
        fit(tiny('digits-lt-mr2', f'batch_size={bs}', 'epochs=1', 'eval_every=100'), tmp_path / f'b{bs}', data=d, verbose=False)
        totals.append(sum(counts.values()))
    steps = [len(E.make_batches(d, tiny('digits-lt-mr2', f'batch_size={bs}'), 'cpu', True)) for bs in (128, 16)]
    assert steps[0] < steps[1], steps                     # the two runs differ in steps per epoch ...
    assert totals[0] == totals[1], totals                 # ... not in host reads


# ---------------------------------------------------------------- post-hoc and suites
def test_posthoc_la_equals_adjusted_stage1_logits(tmp_path):
    from margin_notes.baselines import logit_adjust_posthoc
    fit(tiny(), tmp_path / 'erm', verbose=False)
    r = E.calibrate_run(tmp_path / 'erm', tmp_path / 'la', method='la', device='cpu')
    cfg, data, model = E.load_run(tmp_path / 'erm', 'cpu')
    out, y = E.collect_outputs(model, E.make_batches(data, cfg, 'cpu', False))
    adj = logit_adjust_posthoc(out, torch.tensor(data.class_counts, dtype=torch.float32))
    from margin_notes.metrics import per_class_accuracy
    assert r['per_class_accuracy'] == per_class_accuracy(adj.argmax(1), y, 10).tolist()
    s1 = json.loads((tmp_path / 'erm' / 'results.json').read_text())
    assert r['stage1']['per_class_accuracy'] == s1['per_class_accuracy']
    # how the calibrated model was trained is the stage-1 run's record, not the calibration call's
    assert r['stage1']['trained_precision'] == s1['precision'] and r['stage1']['trained_segments'] == s1['segments']
    (tmp_path / 'erm' / 'results.json').unlink()   # a run folder without results: nothing to copy, no error
    assert 'trained_precision' not in E.calibrate_run(tmp_path / 'erm', tmp_path / 'la2', method='la', device='cpu')['stage1']


def test_marc_in_fit_and_on_checkpoint_agree(tmp_path):
    pytest.importorskip('margin_notes.marc')
    r1 = fit(tiny('digits-lt-erm', 'posthoc=marc'), tmp_path / 'm', verbose=False)
    fit(tiny(), tmp_path / 'erm', verbose=False)
    r2 = E.calibrate_run(tmp_path / 'erm', tmp_path / 'erm-marc', device='cpu')
    assert r1['posthoc']['method'] == 'marc' and len(r1['posthoc']['omega']) == 10
    np.testing.assert_allclose(r1['posthoc']['omega'], r2['posthoc']['omega'], rtol=1e-4, atol=1e-5)
    assert r1['per_class_accuracy'] == r2['per_class_accuracy']


def test_suite_runs_every_available_method(tmp_path, capsys):
    cfg = get_config('digits-lt', ['epochs=1', 'model_kwargs={hidden: 32, feature_dim: 16}', 'progress=false'])
    s = E.run_config(cfg, tmp_path / 's')
    out = capsys.readouterr().out
    labels = [m['label'] for m in cfg.suite]
    assert set(s['methods']) | set(s['skipped']) == set(labels)
    for f in ('summary.json', 'summary.csv', 'summary.md', 'per_class.png'): assert (tmp_path / 's' / f).exists()
    assert 'outputs:' in out and str((tmp_path / 's').resolve()) in out
    for lab in s['methods']: assert lab in out


def test_list_file_datasets_go_through_the_dataloader_path(tmp_path):
    "ImageNet-LT-style list files (a fake tree in the real format): shuffled training batches and ordered test batches."
    from margin_notes.data import make_fake_list_tree
    root = make_fake_list_tree(tmp_path / 'inet', counts=(4, 3, 2), per_class_eval=(1, 2))
    d = E.load_data(Config(dataset='imagenet-lt', data_kwargs={'root': str(root)}))
    assert not d.in_memory and d.class_counts[:3] == [4, 3, 2]
    cfg = Config(batch_size=4, num_workers=0)
    tr = list(E.make_batches(d, cfg, 'cpu', True, torch.Generator().manual_seed(0)))
    assert len(tr) == 2 and tr[0][0].shape == (4, 3, 224, 224)
    te = list(E.make_batches(d, cfg, 'cpu', False))
    assert torch.cat([y for _, y in te]).tolist() == [0, 0, 1, 1, 2, 2]
    # two processes: each gets half of every global batch, same order as one process
    parts = [list(E.make_batches(d, cfg, 'cpu', True, torch.Generator().manual_seed(0), rank=r, world=2)) for r in (0, 1)]
    for (_, y1), (_, ya), (_, yb) in zip(tr, *parts): assert torch.equal(torch.cat([ya, yb]), y1)


@pytest.mark.parametrize('pipeline', ['gpu', 'dataloader'])
def test_image_path_resnet32_channels_last_both_pipelines(tmp_path, pipeline):
    "The CIFAR path end to end on tiny synthetic images: ResNet-32, cosine head + LDAM-DRW, channels_last, either pipeline."
    pytest.importorskip('margin_notes.models')
    cfg = get_config('cifar10lt100-r32-ldam-drw', ['dataset=synthetic-cifar10', 'data_kwargs={n_max: 16, test_per_class: 2, size: 8}',
                                                   'epochs=2', 'drw_start=1', 'batch_size=8', f'pipeline={pipeline}', 'num_workers=0',
                                                   'channels_last=true', 'progress=false', 'device=cpu'])
    r = fit(cfg, tmp_path / pipeline, verbose=False)
    assert len(r['per_class_accuracy']) == 10 and r['history'][-1]['train_loss'] > 0
    ck = _ckpt(tmp_path / pipeline)
    assert ck['loss'].get('weight') is not None   # DRW switched on at epoch 1


# ---------------------------------------------------------------- resume safety, Ctrl-C, thresholds
def test_resume_refuses_a_changed_config(tmp_path):
    cfg = tiny('digits-lt-erm', 'epochs=3')
    fit(cfg, tmp_path / 'r', stop_after=1, verbose=False)
    before = (tmp_path / 'r' / 'config.json').read_text()
    with pytest.raises(ConfigError, match=r"epochs: 3 -> 6.*--force"): fit(cfg.replace(epochs=6), tmp_path / 'r', resume=True)
    with pytest.raises(ConfigError, match="loss: 'erm' -> 'bs'"): fit(cfg.replace(loss='bs'), tmp_path / 'r', resume=True)
    assert (tmp_path / 'r' / 'config.json').read_text() == before   # nothing overwritten
    r = fit(cfg.replace(epochs=4), tmp_path / 'r', resume=True, force=True, verbose=False)
    assert r['epochs'] == 4 and len(r['history']) == 4


def test_keyboard_interrupt_stops_at_the_saved_epoch_and_resume_finishes(tmp_path):
    cfg = tiny('digits-lt-mr2', 'epochs=3')
    ref = fit(cfg, tmp_path / 'ref', verbose=False)
    def stop(epoch, row):
        if epoch == 1: raise KeyboardInterrupt
    with pytest.raises(E.TrainingInterrupted) as e: fit(cfg, tmp_path / 'r', on_epoch=stop, verbose=False)
    assert (e.value.epochs_done, e.value.epochs) == (2, 3) and _ckpt(tmp_path / 'r')['epoch'] == 2
    assert isinstance(e.value, KeyboardInterrupt)
    r = fit(cfg, tmp_path / 'r', resume=True, verbose=False)
    assert r['per_class_accuracy'] == ref['per_class_accuracy']


def test_group_thresholds_are_config_fields(tmp_path):
    r = fit(tiny('digits-lt-erm', 'report={many: 60, few: 10}'), tmp_path / 'r', verbose=False)
    counts, acc = np.array(r['class_counts']), np.array(r['per_class_accuracy'])
    assert r['report']['groups'] == {'many': 60, 'few': 10}
    assert r['report']['many_shot'] == pytest.approx(acc[counts > 60].mean())
    assert r['report']['few_shot'] == pytest.approx(acc[counts < 10].mean())
    assert r['report']['medium_shot'] == pytest.approx(acc[(counts >= 10) & (counts <= 60)].mean())


def test_precision_follows_the_hardware_and_the_config(monkeypatch):
    "amp 'auto': bf16 exactly where the device computes bf16 natively (not for the MLP); channels_last 'auto': on a CPU, or with bf16; explicit values win."
    from margin_notes.config import Config
    from margin_notes.loop import cpu_has_native_bf16
    native = cpu_has_native_bf16()
    auto = E.precision(Config(arch='resnet32'), 'cpu')
    assert auto == ({'amp': 'bf16', 'channels_last': True} if native else {'amp': 'fp32', 'channels_last': True})
    for hw in (True, False):   # both kinds of CPU, whatever this one is
        monkeypatch.setattr(E, 'native_bf16', lambda dev, hw=hw: hw)
        assert E.precision(Config(arch='resnet32'), 'cpu') == {'amp': 'bf16' if hw else 'fp32', 'channels_last': True}
        assert E.precision(Config(arch='small-cnn'), 'cpu')['channels_last'] is True
        assert E.precision(Config(arch='mlp'), 'cpu') == {'amp': 'fp32', 'channels_last': False}
        assert E.precision(Config(arch='resnet32'), 'cuda') == {'amp': 'bf16' if hw else 'fp32', 'channels_last': hw}   # GPU: with bf16 only
    monkeypatch.undo()
    assert E.precision(Config(arch='resnet32', amp='fp32'), 'cpu') == {'amp': 'fp32', 'channels_last': True}
    assert E.precision(Config(arch='resnet32', amp='fp32', channels_last=False), 'cpu') == {'amp': 'fp32', 'channels_last': False}
    assert E.precision(Config(arch='resnet32', amp='bf16', channels_last=False), 'cpu') == {'amp': 'bf16', 'channels_last': False}
    with pytest.raises(ValueError, match='channels_last'):
        from margin_notes.config import validate_config
        validate_config(Config(channels_last='yes'))


@pytest.mark.parametrize('hit', ['after-save', 'during-csv'])
def test_ctrl_c_next_to_a_checkpoint_reports_the_saved_epochs(tmp_path, monkeypatch, hit):
    "A Ctrl-C that lands while an epoch is being saved: the epochs reported equal the checkpoint's (a signal between the save and the count said one fewer)."
    import signal
    real_save, real_csv = E.save_checkpoint, E.write_csv
    def save(state, path):
        real_save(state, path)
        if hit == 'after-save' and state['epoch'] == 2: os.kill(os.getpid(), signal.SIGINT)
    def csv_(path, rows):
        real_csv(path, rows)
        if hit == 'during-csv' and len(rows) == 2: os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(E, 'save_checkpoint', save); monkeypatch.setattr(E, 'write_csv', csv_)
    # Python's own Ctrl-C handler, also when the test runner was started with SIGINT ignored (a background job)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(E.TrainingInterrupted) as ei:
            fit(get_config('digits-lt-erm').replace(epochs=5, progress=False), tmp_path / 'r', verbose=False)
        assert ei.value.epochs_done == 2 == E.load_checkpoint(tmp_path / 'r' / 'checkpoint.pt', 'cpu')['epoch']
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is put back
    finally: signal.signal(signal.SIGINT, outer)


def test_ctrl_c_ignored_stays_ignored(tmp_path, monkeypatch):
    "With SIGINT ignored (a job started in the background), a signal during the save is dropped and the run finishes; the handler stays SIG_IGN."
    import signal
    real_save = E.save_checkpoint
    def save(state, path):
        real_save(state, path)
        if state['epoch'] == 1: os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(E, 'save_checkpoint', save)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        r = fit(get_config('digits-lt-erm').replace(epochs=3, progress=False), tmp_path / 'r', verbose=False)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally: signal.signal(signal.SIGINT, before)
    assert E.load_checkpoint(tmp_path / 'r' / 'checkpoint.pt', 'cpu')['epoch'] == 3 and 'report' in r


# ---------------------------------------------------------------- provenance of runs resumed elsewhere
def test_results_record_every_call_that_trained_the_run(tmp_path, monkeypatch, capsys):
    "A run resumed in another precision lists both parts under 'segments'; its precision reads 'mixed'; wall time is their sum."
    cfg = tiny('digits-lt-erm', 'epochs=3')
    one = fit(cfg, tmp_path / 'one', verbose=False)
    (s1,) = one['segments']
    assert s1['epochs'] == [1, 3] and s1['precision'] == one['precision'] == {'amp': 'fp32', 'channels_last': False}
    assert one['wall_time_s'] == s1['wall_time_s'] > 0 and one['device'] == s1['device'] and s1['cpu']
    fit(cfg, tmp_path / 'r', stop_after=1, verbose=False)
    assert [x['epochs'] for x in _ckpt(tmp_path / 'r')['segments']] == [[1, 1]]
    fit(cfg, tmp_path / 'r', resume=True, stop_after=1, verbose=False)   # same machine, same precision: no note
    assert capsys.readouterr().out == ''
    real = E._amp_dtype
    monkeypatch.setattr(E, '_amp_dtype', lambda c, d: torch.bfloat16)   # as 'auto' resolves on a CPU with native bf16
    r = fit(cfg, tmp_path / 'r', resume=True)
    out = capsys.readouterr().out
    assert "resuming at epoch 3 on cpu" in out and "in bf16 autocast; earlier epochs 1-1: cpu" in out and "epochs 2-2: cpu" in out
    assert out.strip().splitlines()[0].endswith("to train on in the earlier precision, add --set amp=fp32 --force to the --resume command")
    assert [(x['epochs'], x['precision']['amp']) for x in r['segments']] == [([1, 1], 'fp32'), ([2, 2], 'fp32'), ([3, 3], 'bf16')]
    assert r['precision'] == {'amp': 'mixed', 'channels_last': False}
    assert r['wall_time_s'] == pytest.approx(sum(x['wall_time_s'] for x in r['segments']))
    monkeypatch.setattr(E, '_amp_dtype', real)


def test_a_checkpoint_without_segments_resumes_and_says_so(tmp_path, capsys):
    "A checkpoint written before segments were recorded: its epochs are marked unrecorded and the total wall time unknown."
    cfg = tiny('digits-lt-erm', 'epochs=2')
    fit(cfg, tmp_path / 'r', stop_after=1, verbose=False)
    ck = _ckpt(tmp_path / 'r'); del ck['segments']; E.save_checkpoint(ck, tmp_path / 'r' / 'checkpoint.pt')
    r = fit(cfg, tmp_path / 'r', resume=True)
    assert "epochs 1-1: device and precision not recorded" in capsys.readouterr().out
    assert r['segments'][0] == {'epochs': [1, 1], 'recorded': False} and r['segments'][1]['epochs'] == [2, 2]
    assert r['wall_time_s'] is None and r['precision'] == {'amp': 'fp32', 'channels_last': False}
    assert json.loads((tmp_path / 'r' / 'results.json').read_text())['segments'] == r['segments']


# ---------------------------------------------------------------- run-folder lock across restarts
@pytest.mark.skipif(E._boot_id() is None or E._proc_start(1) is None, reason='needs /proc (Linux)')
@pytest.mark.parametrize('key,gone', [('boot', True), ('start', True), ('same', False)])
def test_a_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path, key, gone):
    "A live pid 1 holds the lock: taken over when the lock was written in another boot or by a process that started at another time."
    import socket
    lock = tmp_path / E._LOCK_NAME
    held = {'pid': 1, 'host': socket.gethostname(), 'since': 'then', 'boot': E._boot_id(), 'start': E._proc_start(1)}
    if key == 'boot': held['boot'] = 'a boot before this one'
    if key == 'start': held['start'] = E._proc_start(1) + 1
    lock.write_text(json.dumps(held))
    if gone:
        with E.run_folder_lock(tmp_path): assert json.loads(lock.read_text())['pid'] == os.getpid()
        assert not lock.exists()
    else:
        with pytest.raises(E.RunFolderError, match=r'in use by another run \(pid 1 '): E.run_folder_lock(tmp_path).__enter__()
        assert json.loads(lock.read_text()) == held   # left as it was


def test_list_file_training_batches_follow_augment_none(tmp_path):
    "augment='none' on list-file data: training batches are the plain evaluation transform (deterministic); the default augments."
    from margin_notes.data import make_fake_list_tree
    root = make_fake_list_tree(tmp_path / 'inet', counts=(4, 3, 2), per_class_eval=(1, 2))
    d = E.load_data(Config(dataset='imagenet-lt', data_kwargs={'root': str(root)}))
    def first(aug, seed):
        torch.manual_seed(seed)   # list-file transforms draw from torch's own RNG
        return next(iter(E.make_batches(d, Config(batch_size=4, num_workers=0, augment=aug), 'cpu', True, torch.Generator().manual_seed(0))))[0]
    assert torch.equal(first('none', 1), first('none', 2))
    assert not torch.equal(first('rrc-flip', 1), first('rrc-flip', 2))


def test_datasets_with_their_own_counts_refuse_an_imbalance_factor():
    "ImageNet-LT, Places-LT and ImageNet bring their counts: an imbalance factor or subsample seed would be silently ignored, so it is refused."
    from margin_notes.presets import get_config
    from margin_notes.data import load_dataset
    validate_config(get_config('imagenetlt-r50-bs'))
    for ov in ('imbalance_factor=10', 'subsample_seed=3'):
        with pytest.raises(ConfigError, match='comes with its own class counts'): validate_config(get_config('imagenetlt-r50-bs', [ov]))
    with pytest.raises(ValueError, match='comes with its own class counts'): load_dataset('places_lt', imbalance_factor=10)
