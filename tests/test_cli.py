"Tests of the margin-notes console command (margin_notes.cli)."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

from margin_notes.cli import main
from margin_notes.report import collect_results
from margin_notes.presets import PRESETS

os.environ.setdefault('MARGIN_NOTES_NO_PROGRESS', '1')
ROOT = Path(__file__).resolve().parents[1]
SMALL = ['--set', 'epochs=2', 'model_kwargs={hidden: 32, feature_dim: 16}', '--no-progress']


ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1', 'MARGIN_NOTES_NO_PROGRESS': '1'}


def _cli(*args, timeout=300, **kw):
    "Run the console command in a subprocess; (returncode, stdout, stderr)."
    r = subprocess.run([sys.executable, '-m', 'margin_notes.cli', *args], env=ENV, capture_output=True, text=True, timeout=timeout, **kw)
    return r.returncode, r.stdout, r.stderr


def test_help_is_fast_and_imports_nothing_heavy(capsys):
    with pytest.raises(SystemExit) as e: main(['--help'])
    assert e.value.code == 0 and 'margin-notes list' in capsys.readouterr().out
    code = ("import sys; from margin_notes.cli import _parser; _parser(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'margin_notes.engine', 'margin_notes.config') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == '[]', r.stdout + r.stderr


def test_list_names_every_preset(capsys):
    assert main(['list']) == 0
    out = capsys.readouterr().out
    for n in PRESETS: assert n in out


@pytest.mark.parametrize('argv,needle', [
    (['run', 'digits-lt-ermm'], 'digits-lt-erm'),
    (['run', 'digits-lt-erm', '--set', 'optimiser=adamw'], "'optimiser'"),
    (['run', 'digits-lt', '--set', 'loss_kwargs.lamm=0.2', '--dry-run'], "lamm"),
    (['run', 'digits-lt-mr2', '--set', 'loss_kwargs.lamm=0.2', '--dry-run'], "did you mean 'lam'"),
    (['run', 'digits-lt-erm', '--set', 'epochs=five', '--dry-run'], 'epochs must be int'),
    (['run', 'digits-lt-erm', '--set', 'epochs=0', '--dry-run'], 'epochs must be positive'),
    (['run', 'digits-lt-erm', '--set', 'loss=ldam', 'head=linear', '--dry-run'], "head='cosine'"),
    (['run', 'digits-lt-erm', '--set', 'lwr.treshold=0.3', '--dry-run'], "did you mean 'threshold'"),
    (['run', 'digits-lt-erm', '--epochs', '5'], 'use --set epochs=5'),
    (['report', '/nonexistent/folder'], 'no results.json'),
    # accepted and silently ignored or misread before: now refused at the dry run
    (['run', 'digits-lt-erm', '--set', 'loss_kwargs.num_classes=5', '--dry-run'], 'set by the run from its data'),
    (['run', 'digits-lt-bs', '--set', 'loss_kwargs.class_counts=[1, 2]', '--dry-run'], 'set by the run from its data'),
    (['run', 'digits-lt-erm', '--set', 'posthoc_kwargs.gamma=1.2', '--dry-run'], 'no post-hoc step'),
    (['run', 'cifar10lt100-r32-erm', '--set', 'augment=rrc-flip', '--dry-run'], "takes 'crop-flip' or 'none'"),
    (['run', 'digits-lt', '--set', 'lwr.threshold=0.5', 'suite=[{name: erm, loss: erm}]', '--dry-run'], 'no member of suite'),
    (['run', 'digits-lt-erm', '--publish', '.', '--dry-run'], 'publish'),
    (['frobnicate'], 'invalid choice'),
])
def test_every_error_is_one_line_with_exit_2(capsys, argv, needle):
    try: rc = main(argv)
    except SystemExit as e: rc = e.code
    out = capsys.readouterr()
    assert rc == 2 and needle in out.err, out.err
    assert len(out.err.strip().splitlines()) == 1 and 'Traceback' not in out.err, out.err


def test_lamm_typo_subprocess_exits_2_naming_it():
    rc, out, err = _cli('run', 'digits-lt', '--set', 'loss_kwargs.lamm=0.2', '--dry-run')
    assert rc == 2 and 'lamm' in err and "'lam'" in err and len(err.strip().splitlines()) == 1, err


def test_dry_run_applies_overrides(capsys):
    assert main(['run', 'cifar100lt100-r32-bs-lwr', '--set', 'lwr.threshold=0.6', 'epochs=3', '--dry-run']) == 0
    out = capsys.readouterr().out
    c, end = json.JSONDecoder().raw_decode(out)   # the config, then what it trains
    assert c['lwr'] == {'threshold': 0.6} and c['epochs'] == 3 and c['loss'] == 'bs-lwr'
    assert 'loss: LWRLoss(base=BalancedSoftmaxLoss(class_counts=<100 training counts>, weight=None), ' in out[end:]
    assert 'threshold=0.6' in out[end:] and 'drw:' not in out[end:]


@pytest.mark.parametrize('preset,want', [('digits-lt-mr2', ["MR2Loss(num_classes=10, ", "variant='released'"]),
                                         ('digits-lt-dbm', ["DBMLoss(class_counts=<10 training counts>, scale='auto', ", "base='bs'"]),
                                         ('cifar10lt100-r32-dbm', ["scale=32.0", "base='ce'"]),
                                         ('cifar100-r32-mr2', ["variant='paper'"])])
def test_dry_run_prints_the_loss_as_its_constructor_call(capsys, preset, want):
    assert main(['run', preset, '--dry-run']) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith('loss: '))
    assert all(w in line for w in want), line


@pytest.mark.parametrize('preset,args,want', [
    ('cifar10jpeglt100-r32-erm', [], None),   # the engine's choice on this machine
    ('cifar10jpeglt100-r32-erm', ['--set', 'amp=fp32', 'channels_last=false'], 'precision on cpu: fp32, default memory format'),
    ('cifar10jpeglt100-r32-erm', ['--set', 'amp=bf16'], 'precision on cpu: bf16 autocast, channels-last'),
    ('digits-lt-erm', [], 'precision on cpu: fp32, default memory format')])   # the MLP: fp32 always
def test_dry_run_says_the_precision_it_would_train_in(capsys, preset, args, want):
    "--dry-run (and the run's first lines) say the precision and memory format the engine would use on this machine."
    from margin_notes.loop import cpu_has_native_bf16
    assert main(['run', preset, '--set', 'device=cpu', *args, '--dry-run']) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('precision on '))
    assert line == (want or f"precision on cpu: {'bf16 autocast' if cpu_has_native_bf16() else 'fp32'}, channels-last")


def test_run_config_file_eval_calibrate_report(tmp_path, capsys):
    cfg = PRESETS['digits-lt-erm'].replace(epochs=2, name='my-run')
    cfg.save(tmp_path / 'my.yaml')
    assert main(['run', str(tmp_path / 'my.yaml'), '--out', str(tmp_path / 'r'), *SMALL]) == 0
    assert 'my-run' in capsys.readouterr().out
    saved = json.loads((tmp_path / 'r' / 'results.json').read_text())
    assert saved['loss'] == 'CELoss(weight=None, num_classes=10)'   # the loss as the constructor call it is, as --dry-run prints it
    assert main(['eval', str(tmp_path / 'r'), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['per_class_accuracy'] == saved['per_class_accuracy']
    assert main(['calibrate', str(tmp_path / 'r'), '--method', 'la']) == 0
    out = capsys.readouterr().out
    cal = tmp_path / 'r-la' / 'results.json'
    assert str(cal.resolve()) in out and json.loads(cal.read_text())['posthoc']['method'] == 'la'
    assert main(['report', str(tmp_path / 'r'), str(tmp_path / 'r-la'), '--out', str(tmp_path / 'rep')]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / 'rep' / 'report.md').exists() and (tmp_path / 'rep' / 'per_class.png').exists()
    assert 'my-run' in out and 'my-run+la' in out
    assert set(collect_results([tmp_path])) == {'my-run', 'my-run+la'}   # a parent folder: every run below it


def test_resume_from_cli(tmp_path, capsys):
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), *SMALL]) == 0
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), '--resume', *SMALL]) == 0   # nothing left: finishes at once
    import csv
    assert len(list(csv.DictReader(open(tmp_path / 'r' / 'metrics.csv')))) == 2
    capsys.readouterr()
    saved = (tmp_path / 'r' / 'config.json').read_text()
    changed = ['--set', 'epochs=5', 'model_kwargs={hidden: 32, feature_dim: 16}', '--no-progress']
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), '--resume', *changed]) == 2
    err = capsys.readouterr().err
    assert 'epochs: 2 -> 5' in err and '--force' in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / 'r' / 'config.json').read_text() == saved
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), '--resume', '--force', *changed]) == 0
    assert len(list(csv.DictReader(open(tmp_path / 'r' / 'metrics.csv')))) == 5


def test_ctrl_c_saves_and_prints_the_resume_command(tmp_path):
    "SIGINT during training: exit 130, one line on stderr with the exact command that resumes the run, which then finishes."
    import csv, shlex, torch
    out = tmp_path / 'r'
    p = subprocess.Popen([sys.executable, '-m', 'margin_notes.cli', 'run', 'digits-lt-erm', '--set', 'epochs=150', '--out', str(out),
                          '--no-progress'], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a job started in the background by a non-interactive shell inherits SIGINT as ignored: restore it
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not (out / 'checkpoint.pt').exists() and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.1)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    cmd = shlex.split(err.split('resume with: ', 1)[1])
    assert cmd == ['margin-notes', 'run', 'digits-lt-erm', '--set', 'epochs=150', '--out', str(out), '--resume', '--no-progress']
    done = torch.load(out / 'checkpoint.pt', weights_only=False)['epoch']
    assert f'after {done} of 150 epochs' in err and 1 <= done < 150
    rc, _, err2 = _cli(*cmd[1:], timeout=600)   # the printed command, as given
    assert rc == 0, err2
    assert len(list(csv.DictReader(open(out / 'metrics.csv')))) == 150


def test_closed_stdout_ends_quietly():
    r = subprocess.run(f"{sys.executable} -m margin_notes.cli list -v | head -1", shell=True, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.stdout.strip() in PRESETS, r.stdout
    assert r.stderr == '', r.stderr


def test_group_thresholds_on_reports(tmp_path, capsys):
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), *SMALL[:-1], 'report.many=60', 'report.few=10', '--no-progress']) == 0
    res = json.loads((tmp_path / 'r' / 'results.json').read_text())
    assert res['report']['groups'] == {'many': 60, 'few': 10}
    capsys.readouterr()
    assert main(['eval', str(tmp_path / 'r'), '--json', '--many', '1000', '--few', '0']) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev['report']['medium_shot'] == pytest.approx(ev['report']['overall']) and ev['report']['groups'] == {'many': 1000, 'few': 0}
    assert main(['report', str(tmp_path / 'r'), '--out', str(tmp_path / 'rep'), '--many', '1000']) == 0
    assert '| digits-lt-erm' in capsys.readouterr().out


def test_suite_default_run_prints_where_outputs_go(tmp_path):
    "`make run` path: the console entry point as a subprocess, smoke sizes, default output folder runs/<preset>."
    r = subprocess.run([sys.executable, '-m', 'margin_notes.cli', 'run', 'digits-lt', '--smoke', '--set', 'epochs=1', '--no-progress'],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out_dir = tmp_path / 'runs' / 'digits-lt'
    assert f"outputs: {out_dir.resolve()}/" in r.stdout
    for f in ('summary.md', 'summary.csv', 'summary.json', 'per_class.png'): assert (out_dir / f).exists()
    s = json.loads((out_dir / 'summary.json').read_text())
    assert 'ERM' in s['methods'] and len(s['methods']) + len(s['skipped']) == len(PRESETS['digits-lt'].suite)
    assert '| ERM' in r.stdout
    # eval on the suite folder itself names its members instead of saying it holds no checkpoint
    e = subprocess.run([sys.executable, '-m', 'margin_notes.cli', 'eval', str(out_dir)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert e.returncode == 2 and len(e.stderr.strip().splitlines()) == 1, e.stderr[-2000:]
    members = sorted(p.name for p in out_dir.iterdir() if (p / 'checkpoint.pt').is_file())
    assert 'erm' in members and 'is a suite folder' in e.stderr, e.stderr
    assert f"members ({', '.join(members)}), e.g. {out_dir / members[0]}" in e.stderr, e.stderr


def test_suite_level_lwr_options_tune_only_the_members_that_use_lwr():
    from margin_notes.config import suite_members
    from margin_notes.presets import get_config
    m = {k: c for k, _, _, c in suite_members(get_config('digits-lt', ['lwr.threshold=0.5']))}
    assert m['bs-lwr'].lwr['threshold'] == 0.5 and all(c.lwr is None for k, c in m.items() if k != 'bs-lwr')


def test_report_names_a_file_that_is_not_a_results_file(tmp_path, capsys):
    for i, text in enumerate(('not json', '{}', '[1, 2]')):
        (tmp_path / f'r{i}').mkdir(); (tmp_path / f'r{i}' / 'results.json').write_text(text)
        rc = main(['report', str(tmp_path / f'r{i}'), '--out', str(tmp_path / f'out{i}')])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"r{i}/results.json: not a" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f'out{i}').exists()   # nothing written for a refused report
