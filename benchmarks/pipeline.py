"""End-to-end training throughput of ResNet-32 on CIFAR-sized data: device-resident pipeline vs torchvision DataLoader.

    python benchmarks/pipeline.py                      # both pipelines, same run, prints the ratio
    python benchmarks/pipeline.py --epochs-timing 5    # CUDA: time N epochs of the full CIFAR-100 ResNet-32 recipe
                                                       # through margin_notes.engine.fit and extrapolate to 200 epochs

Both pipelines feed the identical training step (margin_notes.engine: ResNet-32, SGD, CE, optional bf16 autocast,
channels_last, torch.compile); only the way batches are made differs:
  gpu        uint8 images held on the device; crop(32, pad 4) + flip + normalise there, per batch (data.GPULoader)
  dataloader uint8 tensor -> pad-4 RandomCrop -> RandomHorizontalFlip -> float -> Normalize, in DataLoader workers
             (data.TensorImageDataset + small_image_transform through data.ShardedLoader)
Data are synthetic uint8 images of CIFAR shape (timing only). Results: results/bench/pipeline-<device>.json.
"""
from __future__ import annotations
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def _device_label(dev):
    return torch.cuda.get_device_name(dev).replace(' ', '-') if dev.type == 'cuda' else f'cpu{os.cpu_count()}'


def measure(pipeline, data, cfg, dev, steps, warmup):
    "Images/s of full training steps (forward, loss, backward, SGD) and of the batch pipeline alone."
    from margin_notes import engine as E, loop as L, presets as P
    torch.manual_seed(0)
    model = E.build_model(cfg, data.num_classes, data.image_shape).to(dev)
    if cfg.channels_last: model = model.to(memory_format=torch.channels_last)
    fwd = L.FeatOut(model)
    if cfg.compile: fwd = torch.compile(fwd)
    loss_fn = E.build_loss(cfg, data.class_counts, model).to(dev)
    opt = E.build_optimizer(cfg, model.parameters())
    amp = E._amp_dtype(cfg, dev)
    c = cfg.replace(pipeline=pipeline)
    gen = torch.Generator(device=dev).manual_seed(0)

    def batches():
        while True:
            yield from E.make_batches(data, c, dev, True, gen)

    it = batches()
    # the pipeline alone
    for _ in range(warmup): xb, yb = next(it)
    _sync(dev); t0 = time.perf_counter(); n = 0
    for _ in range(steps): xb, yb = next(it); n += len(yb)
    _sync(dev); load_ips = n / (time.perf_counter() - t0)
    # full training steps
    def step(xb, yb):
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            f, out = fwd(xb)
        loss = loss_fn(out.float(), yb, features=f.float())
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss.detach()
    model.train()
    for _ in range(warmup): step(*next(it))
    _sync(dev); t0 = time.perf_counter(); n = 0
    for _ in range(steps):
        xb, yb = next(it); step(xb, yb); n += len(yb)
    _sync(dev); train_ips = n / (time.perf_counter() - t0)
    return {'train_images_per_s': train_ips, 'pipeline_only_images_per_s': load_ips}


def throughput(args, dev):
    from margin_notes import engine as E, presets as P
    K = 100
    cfg = P.get_config('cifar100-r32-erm', [f'batch_size={args.batch_size}', f'num_workers={args.workers}',
                                            f'amp={"bf16" if args.amp else "null"}', f'channels_last={args.channels_last}',
                                            f'compile={args.compile}', 'augment=crop-flip'])
    n_max = max(args.images // K, 1)
    data = E.load_data(cfg.replace(dataset=f'synthetic-cifar{K}', imbalance_factor=1.0, data_kwargs={'n_max': n_max, 'test_per_class': 1}))
    res = {'device': _device_label(dev), 'torch': torch.__version__, 'cpu_threads': torch.get_num_threads(),
           'images': len(data.train_labels), 'batch_size': args.batch_size, 'steps': args.steps, 'warmup': args.warmup,
           'dataloader_workers': args.workers, 'amp': cfg.amp, 'channels_last': cfg.channels_last, 'compile': cfg.compile,
           'model': 'resnet32 (CIFAR, 0.47M params), CE, SGD', 'data': 'synthetic uint8 3x32x32 (timing only)'}
    for p in args.pipelines:
        res[p] = measure(p, data, cfg, dev, args.steps, args.warmup)
        print(f"{p:>10}: {res[p]['train_images_per_s']:9.0f} img/s training, {res[p]['pipeline_only_images_per_s']:9.0f} img/s pipeline alone", flush=True)
    if 'gpu' in res and 'dataloader' in res:
        res['ratio_gpu_over_dataloader'] = res['gpu']['train_images_per_s'] / res['dataloader']['train_images_per_s']
        print(f"device-resident / DataLoader training throughput: {res['ratio_gpu_over_dataloader']:.2f}x")
    return res


def epochs_timing(args, dev):
    "Time N epochs of the CIFAR-100 ResNet-32 recipe (50,000 synthetic images, per-epoch test eval) and extrapolate."
    from margin_notes import engine as E, presets as P
    cfg = P.get_config('cifar100-r32-erm', ['dataset=synthetic-cifar100', 'data_kwargs={n_max: 500, test_per_class: 100}',
                                            f'amp={"bf16" if args.amp else "null"}', f'channels_last={args.channels_last}',
                                            f'compile={args.compile}', 'pipeline=gpu', 'progress=false', f'device={dev}'])
    if args.full: n = 200
    else: n = args.epochs_timing
    cfg = cfg.replace(epochs=n, name=f'cifar100-r32-erm-timing-{n}ep')
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = E.fit(cfg, d, verbose=False)
        wall = time.perf_counter() - t0
    ep = [row['time_s'] for row in r['history']]
    steady = ep[1:] if len(ep) > 1 else ep
    per_epoch = sum(steady) / len(steady)
    out = {'device': _device_label(dev), 'torch': torch.__version__, 'epochs_measured': n, 'wall_s_measured': wall,
           'epoch_times_s': ep, 'steady_epoch_s': per_epoch, 'first_epoch_s': ep[0],
           'setup_s': wall - sum(ep), 'amp': cfg.amp, 'channels_last': cfg.channels_last, 'compile': cfg.compile,
           'recipe': 'cifar100-r32-erm (batch 128, 390 steps/epoch, test eval every epoch), synthetic data of CIFAR-100 shape'}
    if n >= 200:
        out['wall_s_200_epochs'] = wall; out['label'] = 'measured: full 200-epoch run'
    else:
        out['wall_s_200_epochs_extrapolated'] = (wall - sum(ep)) + ep[0] + per_epoch * 199
        out['label'] = f'extrapolated from {n} measured epochs: setup + first epoch + 199 x mean of epochs 2..{n}'
    key = 'wall_s_200_epochs' if n >= 200 else 'wall_s_200_epochs_extrapolated'
    print(f"{n} epochs in {wall:.1f} s (steady {per_epoch:.2f} s/epoch); 200 epochs: {out[key] / 60:.2f} min ({out['label']})")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto')
    p.add_argument('--images', type=int, default=None, help='training images (default: 50,000 on CUDA, 2,048 on CPU)')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--steps', type=int, default=None, help='timed steps (default: 200 on CUDA, 6 on CPU)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps first (default: 20 on CUDA, 2 on CPU)')
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: min(8, cores))')
    p.add_argument('--pipelines', nargs='+', default=['gpu', 'dataloader'])
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None, help='bf16 autocast (default: on CUDA)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None, help='(default: on CUDA)')
    p.add_argument('--compile', action='store_true', help='torch.compile the model')
    p.add_argument('--epochs-timing', type=int, default=0, metavar='N', help='time N epochs of the full recipe (CUDA) and extrapolate')
    p.add_argument('--full', action='store_true', help='with --epochs-timing: run all 200 epochs')
    p.add_argument('--out', default=str(ROOT / 'results' / 'bench'))
    args = p.parse_args(argv)
    dev = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else ('cpu' if args.device == 'auto' else args.device))
    cuda = dev.type == 'cuda'
    args.images = args.images or (50000 if cuda else 2048)
    args.steps = args.steps or (200 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    args.workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    args.amp = cuda if args.amp is None else args.amp
    args.channels_last = cuda if args.channels_last is None else args.channels_last
    res = {'throughput': throughput(args, dev)} if args.pipelines else {}
    if args.epochs_timing or args.full:
        if not cuda: print('note: --epochs-timing is meant for CUDA; running on the CPU anyway')
        res['epochs_timing'] = epochs_timing(args, dev)
    res['host'] = platform.node(); res['when'] = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    if hasattr(os, 'getloadavg'): res['load_average_1_5_15'] = os.getloadavg()   # shared machines: read the figures with this
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    path = out / f"pipeline-{_device_label(dev)}.json"
    from margin_notes.core import atomic_write_json
    atomic_write_json(path, res)
    print(f"results: {path}")


if __name__ == '__main__':
    main()
