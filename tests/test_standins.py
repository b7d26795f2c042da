"Tests for margin_notes.standins and the loaders that read its output: format-identical stand-ins of CIFAR, CIFAR-10 (JPEG), ImageNet and ImageNet-LT."
import io, json, os, pickle, tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from margin_notes.core import data_root
from margin_notes.data import (load_dataset, read_cifar_python, cifar10_jpeg_arrays, imagenet_class_names, is_standin_root,
                               make_fake_list_tree, CIFAR10_CLASSES, _jpeg_archive)
from margin_notes import standins as S
from margin_notes.standins import (standin_images, dump_py2_pickle, make_cifar_python, make_cifar10_jpeg, make_imagenet_folder,
                                   make_imagenet_lt, standin_root, using_data_root, STANDIN_KINDS)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A private cache folder, so that stand-in roots and decode caches of one test never leak into another."
    monkeypatch.setenv('MARGIN_NOTES_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def _one_line(e): return '\n' not in str(e.value)


# ---------------------------------------------------------------- images

def test_standin_images_deterministic_and_learnable():
    y = np.repeat(np.arange(10), 6)
    a, b = standin_images(y, 16, seed=3), standin_images(y, 16, seed=3)
    assert a.dtype == np.uint8 and a.shape == (60, 16, 16, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, standin_images(y, 16, seed=4))
    # nearest class mean on fresh draws: far above chance (10 %)
    means = np.stack([a[y == k].reshape(6, -1).mean(0) for k in range(10)]).astype(np.float32)
    t = standin_images(y, 16, seed=9).reshape(60, -1).astype(np.float32)
    acc = (((t[:, None] - means[None]) ** 2).sum(-1).argmin(1) == y).mean()
    assert acc > 0.9


# ---------------------------------------------------------------- CIFAR python layout

def test_py2_pickle_reads_like_the_originals(tmp_path):
    p = tmp_path / 'x'
    long_name = 'n' * 300  # BINSTRING (length >= 256) as well as SHORT_BINSTRING
    dump_py2_pickle({'label_names': ['cat', long_name], 'data': np.arange(4, dtype=np.uint8).reshape(2, 2), 'labels': [0, 1]}, p)
    b = pickle.load(open(p, 'rb'), encoding='bytes')
    l = pickle.load(open(p, 'rb'), encoding='latin1')
    assert b[b'label_names'] == [b'cat', long_name.encode()] and l['label_names'] == ['cat', long_name]
    assert np.array_equal(b[b'data'], l['data']) and b[b'data'].dtype == np.uint8 and l['labels'] == [0, 1]


def _independent_cifar(folder, K):
    "Decode the pickles as torchvision does (encoding='latin1', str keys), without the library's reader."
    tr = [f'data_batch_{i}' for i in range(1, 6)] if K == 10 else ['train']
    te = ['test_batch'] if K == 10 else ['test']
    key = 'labels' if K == 10 else 'fine_labels'
    def read(files):
        ds = [pickle.load(open(folder / f, 'rb'), encoding='latin1') for f in files]
        x = np.concatenate([d['data'] for d in ds]).reshape(-1, 3, 32, 32)
        return x, np.concatenate([d[key] for d in ds])
    meta = pickle.load(open(folder / ('batches.meta' if K == 10 else 'meta'), 'rb'), encoding='latin1')
    return read(tr), read(te), meta['label_names' if K == 10 else 'fine_label_names']


@pytest.mark.parametrize('K', [10, 100])
def test_cifar_python_roundtrip(tmp_path, K):
    folder = make_cifar_python(tmp_path, K, train_per_class=7, test_per_class=3, seed=5)
    (xtr, ytr), (xte, yte), names = _independent_cifar(folder, K)
    for root in (tmp_path, folder):  # the folder above cifar-*-python/, or the folder itself
        b = load_dataset(f'cifar{K}', root=str(root))
        assert b.train_images.dtype == torch.uint8 and b.train_labels.dtype == torch.int64
        assert b.train_images.shape == (7 * K, 3, 32, 32) and b.test_images.shape == (3 * K, 3, 32, 32)
        assert np.array_equal(b.train_images.numpy(), xtr) and np.array_equal(b.train_labels.numpy(), ytr)
        assert np.array_equal(b.test_images.numpy(), xte) and np.array_equal(b.test_labels.numpy(), yte)
        assert b.classes == names and b.num_classes == K and b.class_counts == [7] * K
        assert b.info['standin'] and b.label == f'CIFAR-{K} [stand-in]'
    # the pixels are the generated ones for the written labels (channel planes, row-major)
    assert np.array_equal(xtr.transpose(0, 2, 3, 1), standin_images(ytr, 32, seed=5))
    assert np.array_equal(xte.transpose(0, 2, 3, 1), standin_images(yte, 32, seed=6))
    if K == 10: assert names == CIFAR10_CLASSES
    assert sorted(np.unique(ytr).tolist()) == list(range(K)) and not np.array_equal(ytr, np.sort(ytr))  # shuffled like the originals


def test_cifar_python_bad_layouts(tmp_path):
    folder = make_cifar_python(tmp_path, 10, train_per_class=2, test_per_class=1)
    (folder / 'data_batch_3').unlink()
    with pytest.raises(FileNotFoundError, match='data_batch_3') as e: load_dataset('cifar10', root=str(tmp_path))
    assert 'cifar-10-batches-py/{data_batch_1, data_batch_2' in str(e.value) and _one_line(e)
    dump_py2_pickle({'data': np.zeros((2, 1024), np.uint8), 'labels': [0, 1]}, folder / 'data_batch_3')  # one channel only
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\)") as e: read_cifar_python(folder, 10)
    assert _one_line(e)
    with pytest.raises(FileNotFoundError, match='cifar-100-python') as e: load_dataset('cifar100', root=str(tmp_path))
    assert 'download=True' in str(e.value) and _one_line(e)


def test_cifar_download_goes_through_torchvision_then_the_own_reader(tmp_path, monkeypatch):
    import torchvision.datasets as tvd, torchvision.datasets.utils as tvu
    calls = []
    def fake_download(url, download_root, filename=None, md5=None, **kw):  # what the real one leaves behind, offline
        calls.append((url, filename, md5)); make_cifar_python(download_root, 100, train_per_class=2, test_per_class=1)
    monkeypatch.setattr(tvu, 'download_and_extract_archive', fake_download)
    b = load_dataset('cifar100', root=str(tmp_path / 'dl'), download=True)
    assert calls == [(tvd.CIFAR100.url, tvd.CIFAR100.filename, tvd.CIFAR100.tgz_md5)]
    assert b.train_images.shape == (200, 3, 32, 32)
    load_dataset('cifar100', root=str(tmp_path / 'dl'), download=True)
    assert len(calls) == 1  # present: nothing downloaded again


# ---------------------------------------------------------------- CIFAR-10 (JPEG)

def test_cifar10_jpeg_roundtrip(tmp_path, cache):
    arch = make_cifar10_jpeg(tmp_path, train_per_class=6, test_per_class=2, seed=2)
    with tarfile.open(arch) as tf: names = tf.getnames()
    assert names[:3] == ['train', 'train/airplane', 'train/airplane/0000.jpg'] and 'test/truck/0001.jpg' in names
    with using_data_root(tmp_path):
        assert _jpeg_archive() == arch
        b = load_dataset('cifar10-jpeg')
        small = cifar10_jpeg_arrays(max_per_class=2)
    assert b.classes == CIFAR10_CLASSES and b.class_counts == [6] * 10 and b.test_images.shape == (20, 3, 32, 32)
    assert b.info['standin'] and b.label.endswith('[stand-in]')
    with tarfile.open(arch) as tf:
        ref = np.asarray(Image.open(io.BytesIO(tf.extractfile('train/ship/0004.jpg').read())).convert('RGB'))
    assert np.array_equal(b.train_images[8 * 6 + 4].permute(1, 2, 0).numpy(), ref)
    assert torch.equal(small['train'][0], b.train_images[torch.cat([torch.arange(k * 6, k * 6 + 2) for k in range(10)])])
    assert not list((cache / 'cifar10-jpeg').glob('*.pt'))  # a generated archive never fills the real decode's cache


# ---------------------------------------------------------------- ImageNet (ImageFolder)

def test_imagenet_folder_matches_torchvision_imagefolder(tmp_path):
    import torchvision
    root = make_imagenet_folder(tmp_path / 'imagenet', num_classes=5, train_per_class=12, val_per_class=3, size=20, seed=1)
    b = load_dataset('imagenet', root=str(root))
    for split, ds in (('train', b.train), ('val', b.test)):
        tv = torchvision.datasets.ImageFolder(str(root / split))
        assert b.classes == tv.classes == sorted(tv.classes)
        assert [(str(root / p), int(y)) for p, y in zip(ds.paths, ds.labels)] == tv.samples
    assert b.num_classes == 5 and b.class_counts == [12] * 5 and len(b.test) == 15 and b.val is None
    assert b.class_names == [f'class {k}' for k in range(5)] and b.info['standin'] and b.label == 'ImageNet [stand-in]'
    img, y = b.train[12 * 3 + 10]
    assert y == 3 and img.size == (20, 20)
    # the mean colour of the decoded image is the generated one (JPEG keeps it)
    gen = standin_images(np.repeat(np.arange(5), 12), 20, seed=1)[12 * 3 + 10].astype(float)
    assert np.abs(np.asarray(img, float).mean((0, 1)) - gen.mean((0, 1))).max() < 3
    capped = load_dataset('imagenet', root=str(root), max_per_class=4)
    assert capped.class_counts == [4] * 5 and len(capped.test) == 15 and capped.train.paths[:4] == b.train.paths[:4]


def test_imagenet_bad_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'<root>/train/<wnid>/\*\.JPEG') as e: load_dataset('imagenet', root=str(tmp_path))
    assert _one_line(e)
    (tmp_path / 'train').mkdir(); (tmp_path / 'val').mkdir()
    Image.new('RGB', (4, 4)).save(tmp_path / 'train' / 'flat.JPEG')  # images without class folders
    with pytest.raises(ValueError, match='no <wnid>/ folders') as e: load_dataset('imagenet', root=str(tmp_path))
    assert _one_line(e)
    root = make_imagenet_folder(tmp_path / 'ok', num_classes=2, train_per_class=1, val_per_class=1, size=8)
    (root / 'val' / 'n99999999').mkdir()
    with pytest.raises(ValueError, match='n99999999') as e: load_dataset('imagenet', root=str(root))
    assert _one_line(e)
    (root / 'classnames.txt').write_text('only one\n'); (root / 'val' / 'n99999999').rmdir()
    with pytest.raises(ValueError, match='one name per line'): load_dataset('imagenet', root=str(root))
    with using_data_root(tmp_path / 'absent'):
        with pytest.raises(FileNotFoundError, match='imagenet'): load_dataset('imagenet')


def test_imagenet_class_names_sources(tmp_path):
    wnids = [f'n{k:08d}' for k in range(1000)]
    assert imagenet_class_names(wnids[:3]) == wnids[:3]  # not the standard 1000: the wnids
    try: from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError: pytest.skip('open_clip not installed')
    names = imagenet_class_names(wnids)
    assert names == list(IMAGENET_CLASSNAMES) and names[0] == 'tench'
    (tmp_path / 'classnames.txt').write_text(''.join(f'c{k}\n' for k in range(1000)))
    assert imagenet_class_names(wnids, tmp_path)[999] == 'c999'  # classnames.txt wins


# ---------------------------------------------------------------- ImageNet-LT

def test_imagenet_lt_from_the_data_root(tmp_path):
    make_imagenet_lt(tmp_path, counts=(5, 3, 1, 1), val_per_class=2, test_per_class=2, size=16, seed=3)
    with using_data_root(tmp_path):
        b = load_dataset('imagenet_lt')
        c = load_dataset('imagenet-lt', max_per_class=2)
    assert b.train.image_root == tmp_path / 'imagenet' and b.num_classes == 4 and b.class_counts == [5, 3, 1, 1]
    assert len(b.val) == 8 and len(b.test) == 8 and b.classes == [f'n{k:08d}' for k in range(4)]
    assert b.class_names == ['class 0', 'class 1', 'class 2', 'class 3'] and b.info['standin'] and b.label == 'ImageNet-LT [stand-in]'
    assert not set(b.train.paths) & set(b.val.paths) and all(p.startswith('val/') for p in b.test.paths)
    lines = (tmp_path / 'imagenet_lt' / 'ImageNet_LT_train.txt').read_text().split('\n')
    assert lines[0] == 'train/n00000000/n00000000_00000.JPEG 0'
    assert json.loads((tmp_path / 'class_counts' / 'ImageNet_LT.json').read_text()) == [5, 3, 1, 1]
    assert c.class_counts == [2, 2, 1, 1] and len(c.test) == 8
    img, y = b.test[7]
    assert y == 3 and img.size == (16, 16)
    # the folder tree doubles as a full ImageNet stand-in; the LT lists are a subset of it
    full = load_dataset('imagenet', root=str(tmp_path / 'imagenet'))
    assert set(b.train.paths) | set(b.val.paths) <= set(full.train.paths) and full.classes == b.classes


def test_imagenet_lt_missing_names_both_folders(tmp_path):
    with using_data_root(tmp_path):
        with pytest.raises(FileNotFoundError) as e: load_dataset('imagenet_lt')
    assert '<data root>/imagenet_lt/' in str(e.value) and '<data root>/imagenet/' in str(e.value) and _one_line(e)
    (tmp_path / 'imagenet_lt').mkdir()
    (tmp_path / 'imagenet_lt' / 'ImageNet_LT_test.txt').write_text('val/n0/x.JPEG 0\n')
    with using_data_root(tmp_path):  # lists there, images not
        with pytest.raises(FileNotFoundError, match='<data root>/imagenet/') as e: load_dataset('imagenet_lt')
    assert _one_line(e)
    with using_data_root(tmp_path):
        with pytest.raises(FileNotFoundError, match='<data root>/places365/'): load_dataset('places_lt')


def test_make_imagenet_lt_reuses_a_tree_and_checks_it(tmp_path):
    make_imagenet_folder(tmp_path / 'imagenet', num_classes=3, train_per_class=4, val_per_class=2, size=8)
    make_imagenet_lt(tmp_path, counts=(3, 2, 1), val_per_class=1, test_per_class=2)
    assert len(list((tmp_path / 'imagenet' / 'train').rglob('*.JPEG'))) == 12  # nothing added to the tree
    with pytest.raises(ValueError, match='needs 5 / 2'): make_imagenet_lt(tmp_path, counts=(4, 2, 1), val_per_class=1)
    with pytest.raises(ValueError, match='one count per class'): make_imagenet_lt(tmp_path, counts=(1, 1))


def test_fake_list_tree_still_works_and_is_marked(tmp_path):
    root = make_fake_list_tree(tmp_path / 'fake', counts=(3, 1))
    assert is_standin_root(root)
    b = load_dataset('imagenet_lt', root=str(root))
    assert b.class_counts == [3, 1] and b.num_classes == 2 and b.label.endswith('[stand-in]')


# ---------------------------------------------------------------- standin_root, using_data_root

def test_using_data_root_restores(monkeypatch, tmp_path):
    monkeypatch.setenv('MARGIN_NOTES_DATA', 'before')
    with using_data_root(tmp_path) as p:
        assert p == tmp_path and data_root() == tmp_path
    assert os.environ['MARGIN_NOTES_DATA'] == 'before'
    with pytest.raises(RuntimeError, match='inside'):
        with using_data_root(tmp_path): raise RuntimeError('inside')
    assert os.environ['MARGIN_NOTES_DATA'] == 'before'
    monkeypatch.delenv('MARGIN_NOTES_DATA')
    with pytest.raises(RuntimeError):
        with using_data_root(tmp_path): raise RuntimeError('inside')
    assert 'MARGIN_NOTES_DATA' not in os.environ


def test_standin_root_is_built_once_with_a_real_layout(cache):
    r = standin_root('imagenet-lt', 'cifar10', 'imagenet')
    marker = r / 'STANDIN'
    assert r.parent == cache / 'standins' and is_standin_root(r)
    for rel in ('cifar/cifar-10-batches-py/data_batch_5', 'cifar/cifar-10-batches-py/batches.meta', 'imagenet/train/n00000009',
                'imagenet/val/n00000000', 'imagenet/classnames.txt', 'imagenet_lt/ImageNet_LT_train.txt',
                'imagenet_lt/ImageNet_LT_test.txt', 'class_counts/ImageNet_LT.json'):
        assert (r / rel).exists(), rel
    assert not (r / 'cifar' / 'cifar-100-python').exists() and not (r / 'cifar10-jpeg.tar.gz').exists()
    stamp = marker.stat().st_mtime_ns
    assert standin_root('cifar10', 'imagenet', 'imagenet_lt') == r and marker.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert standin_root('cifar10', seed=1) != r
    with using_data_root(r):
        c, i, lt = load_dataset('cifar10-lt10'), load_dataset('imagenet'), load_dataset('imagenet_lt')
    assert c.class_counts[0] == 20 and c.class_counts[-1] == 2 and 'stand-in' in c.label
    assert i.num_classes == lt.num_classes == 10 and i.class_counts == [8] * 10 and lt.classes == i.classes
    assert sum(lt.class_counts) < sum(i.class_counts) and lt.class_counts[0] > lt.class_counts[-1]
    with pytest.raises(ValueError, match='unknown stand-in kind') as e: standin_root('svhn')
    assert _one_line(e) and all(k in str(e.value) for k in STANDIN_KINDS)


def test_standin_root_leaves_nothing_on_failure(cache, monkeypatch):
    def broken(root, seed):
        make_cifar_python(root / 'cifar', 10, train_per_class=1, test_per_class=1)
        raise OSError('disk full')
    monkeypatch.setitem(S._BUILDERS, 'cifar100', broken)
    with pytest.raises(OSError, match='disk full'): standin_root('cifar10', 'cifar100')
    assert list((cache / 'standins').iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv('MARGIN_NOTES_CACHE', str(cache))
    assert is_standin_root(standin_root('cifar10', 'cifar100'))  # and the next call builds it


def test_full_standin_root_is_fast_and_every_loader_reads_it(cache):
    import time
    t = time.time(); r = standin_root(); dt = time.time() - t
    assert dt < 30, dt  # about a second on two cores
    with using_data_root(r):
        for name in ('cifar10', 'cifar100', 'cifar10-jpeg', 'imagenet', 'imagenet_lt', 'cifar100-lt100'):
            b = load_dataset(name)
            assert b.info.get('standin') and b.label.endswith('[stand-in]'), name


def test_real_data_is_not_labelled_as_standin():
    if _jpeg_archive() is None: pytest.skip('cifar10-jpeg.tar.gz not under the data root')
    b = load_dataset('cifar10-jpeg', max_per_class=2)
    assert 'standin' not in b.info and 'stand-in' not in b.label


def test_standin_root_refuses_a_folder_it_did_not_write(cache):
    "A folder at a stand-in root's place without the marker is someone else's: left as it is, one-line error."
    from margin_notes.standins import STANDIN_VERSION
    theirs = cache / 'standins' / f'v{STANDIN_VERSION}-seed0-cifar10'
    theirs.mkdir(parents=True); (theirs / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='no stand-in marker') as e: standin_root('cifar10')
    assert _one_line(e) and str(theirs) in str(e.value)
    assert (theirs / 'notes.txt').read_text() == 'mine' and [p.name for p in (cache / 'standins').iterdir()] == [theirs.name]


def test_standin_root_passes_other_rename_failures_through(cache, monkeypatch):
    "A rename that fails for another reason (here: permission) is reported as it came, not as someone else's folder, and leaves nothing behind."
    def denied(src, dst): raise PermissionError(13, 'Permission denied', str(dst))
    monkeypatch.setattr(S.os, 'rename', denied)
    with pytest.raises(PermissionError, match='Permission denied'): standin_root('cifar10')
    monkeypatch.undo()
    assert list((cache / 'standins').iterdir()) == []
