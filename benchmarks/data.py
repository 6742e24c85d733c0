"""Input pipeline against the model: writes the "Data loading" section of BENCHMARKS.md.

    python benchmarks/data.py [--quick] [--no-write]

Loader images/s per worker: one process, one thread (what each DataLoader worker runs), decoding
500x375 JPEG and PNG files through the lab's transforms: ImageNet training (RandomResizedCrop 224
+ flip) and evaluation (resize 256 + centre crop 224), ending in uint8 (today) or in normalised
float32 (the former path, for comparison). Also timed: the device-side normalisation of a uint8
batch (here on the CPU; on a GPU it is one elementwise kernel). Model images/s: torchvision
ResNet-18 and ResNet-50 forward + backward + SGD step at 224 px on one thread. Times are process
CPU time (medians over rounds), so a busy shared machine slows the figures little.

Which one bounds training: on this CPU, compare images/s per core; on a GPU, the number of workers
needed to feed it, from a published GPU throughput (an estimate, not measured here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import device_name, markdown_table, write_section  # noqa: E402

from xvol_lab.data.device import DeviceNormalize  # noqa: E402
from xvol_lab.data.images import load_rgb  # noqa: E402
from xvol_lab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_eval, imagenet_train, to_tensor  # noqa: E402

WIDTH, HEIGHT, SIZE = 500, 375, 224
# ResNet-50 training throughput on one A100 in mixed precision, as NVIDIA's DeepLearningExamples
# report it for ResNet-50 v1.5 (order of magnitude; not measured here, no GPU was available).
GPU_RESNET50_IMAGES_PER_S = 2500


def field(rng: np.random.Generator, cells: tuple[int, int]) -> np.ndarray:
    """A smooth random colour field of 500x375 (bicubic upsampling of `cells` random colours)."""
    coarse = rng.integers(0, 256, (*cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC), dtype=np.float32)


def write_images(folder: Path, count: int, suffix: str) -> list[Path]:
    """`count` photo-like 500x375 images: large colour regions, mid-scale texture, sensor-like noise
    and a hard-edged object; about 95 KiB as JPEG at quality 90, like an average ImageNet photo."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        img = 0.6 * field(rng, (6, 8)) + 0.4 * field(rng, (47, 63)) + rng.normal(0, 16, (HEIGHT, WIDTH, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        img[100:200, 150 + i % 50:300] = rng.integers(0, 256, 3)  # a hard-edged object
        path = folder / f"{i:03d}{suffix}"
        Image.fromarray(img).save(path, quality=90) if suffix == ".jpg" else Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def cpu_seconds(fn: Callable[[], object], rounds: int) -> float:
    """Median process CPU seconds of `fn()` over `rounds` (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def loader_rates(jpegs: list[Path], pngs: list[Path], rounds: int) -> list[tuple[str, float]]:
    """(pipeline, images/s in one process on one thread) for each input pipeline."""
    float_train = v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip(),
                              to_tensor(IMAGENET_MEAN, IMAGENET_STD)])
    float_eval = v2.Compose([v2.Resize(int(SIZE / 0.875), antialias=True), v2.CenterCrop(SIZE),
                             to_tensor(IMAGENET_MEAN, IMAGENET_STD)])
    train, evaluate = imagenet_train(SIZE), imagenet_eval(SIZE)
    pipelines = {
        "JPEG decode only": (jpegs, None),
        "JPEG, train crop + flip -> uint8 (now)": (jpegs, train),
        "JPEG, train crop + flip -> float32 normalised (before)": (jpegs, float_train),
        "JPEG, eval resize + crop -> uint8 (now)": (jpegs, evaluate),
        "JPEG, eval resize + crop -> float32 normalised (before)": (jpegs, float_eval),
        "PNG, train crop + flip -> uint8 (now)": (pngs, train),
    }
    rates = []
    for name, (paths, transform) in pipelines.items():
        def run(paths: list[Path] = paths, transform: Callable | None = transform) -> None:
            for path in paths:
                image = load_rgb(path)
                if transform is not None:
                    transform(image)
        seconds = cpu_seconds(run, rounds)
        rates.append((name, len(paths) / seconds))
    return rates


def normalise_rate(batch: int, rounds: int) -> float:
    """Images/s of `DeviceNormalize` on a uint8 (batch, 3, 224, 224) batch on this CPU (one thread)."""
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8)
    normalize = DeviceNormalize(IMAGENET_MEAN, IMAGENET_STD)
    return batch / cpu_seconds(lambda: normalize.images(images), rounds)


def model_rate(name: str, batch: int, rounds: int) -> float:
    """Training images/s (forward + backward + SGD step, float32, 224 px) of a torchvision model."""
    model = getattr(torchvision.models, name)(num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, SIZE, SIZE), torch.randint(0, 1000, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return batch / cpu_seconds(step, rounds)


def report(rates: list[tuple[str, float]], normalise: float, models: dict[str, float], count: int,
           batch: int, kib: dict[str, float]) -> str:
    rate = dict(rates)
    train_now = rate["JPEG, train crop + flip -> uint8 (now)"]
    resnet50 = models["ResNet-50"]
    rows = [[name, f"{r:.0f}"] for name, r in rates]
    model_rows = [[name, f"{r:.1f}", f"{train_now / r:.0f}"] for name, r in models.items()]
    workers = GPU_RESNET50_IMAGES_PER_S / train_now
    return f"""
Machine: {device_name()}; shared by other jobs, so single-thread process CPU time is measured
(medians). {count} images of 500x375 per format (mean file size: JPEG quality 90 {kib[".jpg"]:.0f} KiB,
PNG {kib[".png"]:.0f} KiB); model batch {batch}.

Loader, images/s per worker (one process, one thread, as a DataLoader worker runs):

{markdown_table(["pipeline", "images/s per worker"], rows)}

Device-side normalisation of a uint8 batch (`DeviceNormalize`, here on the CPU, one thread):
{normalise:.0f} images/s. A uint8 batch is 4x smaller than float32 to pin and copy
(3x224x224: 147 KiB against 588 KiB per image).

Model, training images/s on one thread of this CPU (forward + backward + SGD, float32, 224 px):

{markdown_table(["model", "images/s per core", "cores one loader worker feeds"], model_rows)}

Which bounds training:
- On this CPU the model does: one worker prepares {train_now:.0f} images/s (JPEG, training
  transforms), {train_now / resnet50:.0f}x what a core trains with ResNet-50.
- On a GPU the loader does: ResNet-50 in mixed precision on one A100-class GPU trains about
  {GPU_RESNET50_IMAGES_PER_S} images/s (estimate from NVIDIA's published figures, not measured here),
  which takes about {workers:.0f} workers at the rate above, i.e. {workers:.0f} free cores per GPU.
  `data.num_workers` defaults to the usable cores shared among the node's processes (minus one each,
  at most 16); nodes with fewer cores per GPU stay loader-bound on JPEG. Normalising on the device
  (now) spares the workers the float conversion; the gain per worker is the "before"/"now" ratio above.
  GPU JPEG decoding (`torchvision.io.decode_jpeg(device="cuda")`) is not built.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    count, rounds, batch = (8, 1, 2) if args.quick else (48, 5, 16)
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = write_images(Path(tmp), count, ".jpg")
        pngs = write_images(Path(tmp), count, ".png")
        torch.manual_seed(0)
        rates = loader_rates(jpegs, pngs, rounds)
        kib = {s: statistics.mean(p.stat().st_size for p in paths) / 1024 for s, paths in ((".jpg", jpegs),
                                                                                            (".png", pngs))}
    normalise = normalise_rate(64, rounds)
    models = {"ResNet-18": model_rate("resnet18", batch, max(1, rounds - 2)),
              "ResNet-50": model_rate("resnet50", batch, max(1, rounds - 2))}
    body = report(rates, normalise, models, count, batch, kib)
    print(body)
    if not args.no_write:
        write_section("Data loading (benchmarks/data.py, cpu)", body)


if __name__ == "__main__":
    main()
