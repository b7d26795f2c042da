"Tests for margin_notes.data: LT counts and subsets, loaders, list files, augmentation pipelines."
import json, math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings, strategies as st

from margin_notes.core import find_data
from margin_notes.data import (cifar_lt_counts, lt_indices, class_groups, load_dataset, DataBundle, read_idx,
                               crop_flip, random_crop_flip, GPULoader, TensorImageDataset, small_image_transform,
                               make_loader, coordinate_probe, augmentation_stats, channel_stats, read_list_file,
                               make_fake_list_tree, imagenet_transform, _jpeg_archive, _fmnist_dir, cifar10_jpeg_arrays)


@pytest.mark.parametrize('K,IF,total', [(10, 100, 12406), (100, 100, 10847), (100, 50, 12608), (100, 10, 19573),
                                        (10, 50, 13996), (10, 10, 20431), (10, 200, 11203), (100, 200, 9502)])
def test_lt_totals(K, IF, total):
    c = cifar_lt_counts(K, IF)
    assert sum(c) == total and c[0] == (5000 if K == 10 else 500)
    assert all(a >= b for a, b in zip(c, c[1:]))


@pytest.mark.parametrize('K,IF,groups', [(10, 100, (8, 2, 0)), (10, 200, (7, 3, 0)), (100, 100, (35, 35, 30)),
                                         (100, 50, (41, 41, 18)), (100, 10, (69, 31, 0)), (100, 200, (30, 31, 39))])
def test_spec_groups(K, IF, groups):
    assert tuple(len(v) for v in class_groups(cifar_lt_counts(K, IF)).values()) == groups


@pytest.mark.parametrize('fname,K', [('CIFAR-10-LT_IMBA100.json', 10), ('CIFAR-100-LT_IMBA100.json', 100)])
def test_counts_equal_marc_release(fname, K):
    p = find_data(f'class_counts/{fname}')
    if p is None: pytest.skip('class_counts/ not under the data root (set MARGIN_NOTES_DATA)')
    assert cifar_lt_counts(K, 100) == json.loads(p.read_text())


def test_lt_counts_bad_inputs():
    with pytest.raises(ValueError, match='n_max'): cifar_lt_counts(7, 10)
    with pytest.raises(ValueError, match='imbalance_factor'): cifar_lt_counts(10, 0.5)
    assert cifar_lt_counts(10, 1) == [5000] * 10


def reference_selection(labels, counts, seed):
    "The reference code's draw, literally: global seed, then np.random.shuffle per class."
    state = np.random.get_state()
    try:
        np.random.seed(seed); out = []
        for k, n in enumerate(counts):
            idx = np.where(np.asarray(labels) == k)[0]; np.random.shuffle(idx); out.extend(idx[:n].tolist())
        return out
    finally: np.random.set_state(state)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=5, max_size=80), st.integers(0, 2**31 - 1), st.data())
def test_lt_indices_reproduces_global_seed_draw(labels, seed, data):
    K = 5
    avail = [labels.count(k) for k in range(K)]
    counts = [data.draw(st.integers(0, a)) for a in avail]
    got = lt_indices(labels, counts, seed=seed)
    assert got.tolist() == reference_selection(labels, counts, seed)
    assert np.bincount(np.asarray(labels)[got], minlength=K).tolist() == counts
    first = lt_indices(labels, counts, selection='first')
    assert first.tolist() == [i for k in range(K) for i in [j for j, l in enumerate(labels) if l == k][:counts[k]]]


def test_lt_indices_global_rng_untouched_and_errors():
    np.random.seed(123); before = np.random.random()
    np.random.seed(123); lt_indices(np.repeat(np.arange(3), 10), [10, 5, 1], seed=0)
    assert np.random.random() == before
    with pytest.raises(ValueError, match='cannot keep'): lt_indices([0, 0, 1], [1, 2])
    with pytest.raises(ValueError, match='selection'): lt_indices([0, 1], [1, 1], selection='random')


def test_synthetic_and_digits():
    b = load_dataset('synthetic-lt10', num_classes=4, image_shape=(1, 6, 6), n_max=40, seed=3)
    assert isinstance(b, DataBundle) and b.class_counts == cifar_lt_counts(4, 10, n_max=40)
    assert b.train_images.dtype == torch.uint8 and b.train_images.shape[1:] == (1, 6, 6)
    d = load_dataset('digits')
    assert d.class_counts == [int(c) for c in np.bincount(d.train_labels.numpy())] and sum(d.class_counts) == 1297
    assert torch.bincount(d.test_labels).tolist() == [50] * 10 and d.train_images.max() == 255
    dl = load_dataset('digits', imbalance_factor=10, selection='first')
    assert dl.class_counts == cifar_lt_counts(10, 10, n_max=120) and dl.info['selection'] == 'first'
    with pytest.raises(ValueError, match='unknown'): load_dataset('svhn')


def test_cifar10_jpeg_smoke_and_lt():
    if _jpeg_archive() is None: pytest.skip('cifar10-jpeg.tar.gz not under the data root')
    b = load_dataset('cifar10-jpeg', max_per_class=30)
    assert b.label == 'CIFAR-10 (JPEG)' and b.classes[0] == 'airplane' and b.classes[-1] == 'truck'
    assert b.class_counts == [30] * 10 and b.train_images.shape == (300, 3, 32, 32)
    lt = load_dataset('cifar10-jpeg-lt10', max_per_class=30)
    assert 'JPEG' in lt.label and lt.class_counts == cifar_lt_counts(10, 10, n_max=30)
    # the LT subset is the per-class shuffle of the first 30 files of each class
    idx = lt_indices(b.train_labels, cifar_lt_counts(10, 10, n_max=30))
    assert torch.equal(lt.train_images, b.train_images[torch.from_numpy(idx)])


def test_jpeg_cache_slice_equals_archive_read(tmp_path, monkeypatch):
    if _jpeg_archive() is None: pytest.skip('cifar10-jpeg.tar.gz not under the data root')
    from margin_notes.data import _decode_jpeg_tar
    from margin_notes.core import atomic_torch_save
    monkeypatch.setenv('MARGIN_NOTES_CACHE', str(tmp_path))
    small = cifar10_jpeg_arrays(max_per_class=12)  # no cache yet: read from the archive
    assert not (tmp_path / 'cifar10-jpeg' / 'cifar10_jpeg_uint8.pt').exists()  # nothing written
    fake_full = _decode_jpeg_tar(_jpeg_archive(), 15)  # stands in for the full decode in the cache
    atomic_torch_save(fake_full, tmp_path / 'cifar10-jpeg' / 'cifar10_jpeg_uint8.pt')
    sliced = cifar10_jpeg_arrays(max_per_class=12)
    for split in ('train', 'test'):
        assert torch.equal(sliced[split][0], small[split][0]) and torch.equal(sliced[split][1], small[split][1])


def test_fmnist():
    if _fmnist_dir() is None: pytest.skip('Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
    x = read_idx(_fmnist_dir() / 't10k-labels-idx1-ubyte.gz')
    assert x.shape == (10000,) and np.bincount(x).tolist() == [1000] * 10
    b = load_dataset('fmnist-lt100')
    assert b.class_counts == cifar_lt_counts(10, 100, n_max=6000) and b.image_shape == (1, 28, 28)


def test_idx_reader_roundtrip(tmp_path):
    import gzip
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = b'\x00\x00\x08\x03' + b''.join(int(s).to_bytes(4, 'big') for s in a.shape) + a.tobytes()
    (tmp_path / 'x.gz').write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / 'x.gz'), a)


def test_list_files_fake_tree(tmp_path):
    make_fake_list_tree(tmp_path, counts=(4, 2, 1), per_class_eval=(1, 2), prefix='Places_LT')
    b = load_dataset('places_lt', root=tmp_path)
    # a generated tree (marker file) has exactly its own classes and says so in its label
    assert b.num_classes == 3 and b.class_counts == [4, 2, 1] and b.info['standin'] and b.label == 'Places-LT [stand-in]'
    assert len(b.val) == 3 and len(b.test) == 6 and b.test.paths[0].startswith('val/')
    loader = make_loader(b.test, batch_size=3, train=False, num_workers=0, transform=imagenet_transform(False, size=24, resize=28))
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 24, 24) and y.tolist() == [0, 0, 1]
    (tmp_path / 'bad.txt').write_text('nolabel\n')
    with pytest.raises(ValueError): read_list_file(tmp_path / 'bad.txt')


def test_real_imagenet_lt_lists(tmp_path):
    p = find_data('imagenet_lt/ImageNet_LT_test.txt')
    if p is None: pytest.skip('ImageNet-LT list files not under the data root')
    import hashlib
    assert hashlib.md5(p.read_bytes()).hexdigest() == '5f5f97c738923e877c5c78accce6744f'  # the published ImageNet_LT_train.txt (chapter 05_data)
    assert hashlib.md5(find_data('imagenet_lt/ImageNet_LT_val.txt').read_bytes()).hexdigest() == 'ef44f8e43fbc904809a77216042e7498'
    paths, labels = read_list_file(p)
    assert len(paths) == 50000 and np.bincount(labels).tolist() == [50] * 1000
    paths, labels = read_list_file(find_data('imagenet_lt/ImageNet_LT_val.txt'))
    assert len(paths) == 20000 and np.bincount(labels).tolist() == [20] * 1000
    with pytest.raises(FileNotFoundError, match='<data root>/imagenet/'):
        load_dataset('imagenet_lt', root='/nonexistent-images', list_dir=str(p.parent))
    b = load_dataset('imagenet_lt', root=tmp_path, list_dir=str(p.parent))
    assert b.train is None and len(b.val) == 20000 and len(b.test) == 50000 and b.num_classes == 1000
    assert 'standin' not in b.info and b.label == 'ImageNet-LT' and b.classes[0] == 'n01440764' and len(set(b.classes)) == 1000
    assert b.class_counts == json.loads(find_data('class_counts/ImageNet_LT.json').read_text())
    for name, total, groups in (('ImageNet_LT', 115846, (385, 479, 136)), ('Places_LT', 62500, (131, 163, 71))):
        c = json.loads(find_data(f'class_counts/{name}.json').read_text())
        assert sum(c) == total and tuple(len(v) for v in class_groups(c).values()) == groups


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(2, 9), st.integers(2, 9), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_crop_flip_matches_torchvision(B, C, H, W, pad, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (B, C, H, W), dtype=torch.uint8, generator=g)
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=g); ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    f = torch.rand(B, generator=g) < 0.5
    out = crop_flip(x, pad, oy, ox, f)
    for i in range(B):
        r = TF.crop(TF.pad(x[i], [pad]) if pad else x[i], int(oy[i]), int(ox[i]), H, W)
        assert torch.equal(out[i], TF.hflip(r) if f[i] else r)


def test_gpuloader_epochs_and_determinism():
    b = load_dataset('synthetic', num_classes=3, image_shape=(3, 8, 8), n_max=30, seed=0)
    mk = lambda seed: GPULoader(b.train_images, b.train_labels, 16, b.mean, b.std, seed=seed)
    l1, l2 = mk(5), mk(5)
    e1 = [x for x, _ in l1]; e2 = [x for x, _ in l2]
    assert all(torch.equal(a, c) for a, c in zip(e1, e2))  # same seed, same batches
    e1b = [y for _, y in l1]
    assert sorted(torch.cat(e1b).tolist()) == sorted(b.train_labels.tolist())  # second epoch: every image once
    assert not all(torch.equal(a, c) for a, c in zip(e1, [x for x, _ in mk(6)]))
    with pytest.raises(ValueError, match='uint8'): GPULoader(b.train_images.int(), b.train_labels)
    # floating-point inputs (cached features) are batched as they are: shuffled, neither augmented nor normalised
    f = torch.randn(len(b.train_labels), 5)
    fb = list(GPULoader(f, b.train_labels, 16, seed=2))
    perm = torch.randperm(len(f), generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.cat([x for x, _ in fb]), f[perm]) and torch.equal(torch.cat([y for _, y in fb]), b.train_labels[perm])


def test_digits_split_is_the_last_images_of_each_class_in_file_order():
    pytest.importorskip('sklearn')
    from sklearn.datasets import load_digits
    target = load_digits().target
    for t in (25, 50):
        d = load_dataset('digits', test_per_class=t)
        assert torch.bincount(d.test_labels).tolist() == [t] * 10
        last = np.concatenate([np.flatnonzero(target == k)[-t:] for k in range(10)])
        raw = torch.from_numpy(np.round(load_digits().images * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)
        assert torch.equal(d.test_images, raw[np.sort(last)])
        assert len(d.train_labels) + len(d.test_labels) == len(target)


def test_augmentation_statistics_agree():
    n = 1500
    probe, y = coordinate_probe(n, 16, 16), torch.zeros(n, dtype=torch.long)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    gs = augmentation_stats(GPULoader(probe, y, 100, mean, std, seed=1), mean, std)
    torch.manual_seed(1)
    ds = TensorImageDataset(probe, y, small_image_transform(mean, std))
    ds_stats = augmentation_stats(torch.utils.data.DataLoader(ds, batch_size=100), mean, std)
    tol = 4 * math.sqrt((1 / 9) * (8 / 9) / n)
    for s in (gs, ds_stats):
        assert s['dy'].min() >= -4 and s['dy'].max() <= 4 and s['dx'].min() >= -4 and s['dx'].max() <= 4
        assert (s['dy_hist'] - 1 / 9).abs().max() < tol and (s['dx_hist'] - 1 / 9).abs().max() < tol
        assert abs(s['flip_rate'] - 0.5) < 4 * 0.5 / math.sqrt(n)
    # the two paths' pixel statistics agree on learnable synthetic images
    b = load_dataset('synthetic', num_classes=5, image_shape=(3, 16, 16), n_max=200, seed=0)
    m1, s1 = channel_stats(make_loader(b, 100, train=True, seed=2))
    torch.manual_seed(2)
    m2, s2 = channel_stats(make_loader(b, 100, train=True, gpu_resident=False, num_workers=0))
    assert torch.allclose(m1, m2, atol=0.02) and torch.allclose(s1, s2, atol=0.02)


def test_make_loader_eval_path_no_augmentation():
    b = load_dataset('synthetic', num_classes=2, image_shape=(1, 4, 4), n_max=5, test_per_class=3, seed=0)
    gl = make_loader(b, 4, train=False)
    dl = make_loader(b, 4, train=False, gpu_resident=False, num_workers=0)
    for (x1, y1), (x2, y2) in zip(gl, dl):
        assert torch.allclose(x1, x2, atol=1e-6) and torch.equal(y1, y2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_gpuloader_cuda():
    b = load_dataset('synthetic', num_classes=3, image_shape=(3, 8, 8), n_max=30, seed=0)
    gl = GPULoader(b.train_images, b.train_labels, 16, b.mean, b.std, device='cuda')
    x, y = next(iter(gl))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32


def test_cifar_missing_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='download=True') as e: load_dataset('cifar100-lt100', root=str(tmp_path))
    assert 'cifar-100-python/{train, test, meta}' in str(e.value) and '\n' not in str(e.value)


def test_cifar_lt_counts_min_count_floors_instead_of_raising():
    from margin_notes.data import cifar_lt_counts
    with pytest.raises(ValueError, match='empty'): cifar_lt_counts(10, 100, n_max=20)
    c = cifar_lt_counts(10, 100, n_max=20, min_count=1)
    assert min(c) == 1 and c[0] == 20 and c == sorted(c, reverse=True)
    # where no class is empty the floor changes nothing
    assert cifar_lt_counts(100, 100, min_count=1) == cifar_lt_counts(100, 100)


@pytest.mark.parametrize('kw,needle', [(dict(test_per_class=-3), 'test_per_class'), (dict(test_per_class=0), 'test_per_class'),
                                       (dict(max_per_class=0), 'max_per_class')])
def test_digits_split_sizes_that_would_be_misread_are_refused(kw, needle):
    "test_per_class=-3 once slicing from the end gave a 3-image training set; refused in one line now."
    pytest.importorskip('sklearn')
    with pytest.raises(ValueError, match=needle): load_dataset('digits', **kw)
