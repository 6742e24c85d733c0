"""GPU check, step 8: inference latency of the deploy (re-parameterized) form against the train form in
eval mode, ResNet-50 with X-volution(PSSA) in stage 3 and all-conv, batch 1 and 64, bf16 autocast,
channels-last. Each call is bracketed by CUDA events (latency, launches included); the median of 30
calls after 5 warm-up calls.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu import StepTable, Stopwatch, configure, step_args  # noqa: E402

from xvol_lab.models import BackboneSpec, build_classifier  # noqa: E402
from xvol_lab.ops import reparameterize  # noqa: E402


def latency_ms(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    watch = Stopwatch(x.device)
    samples = []
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16):
        for i in range(5 + calls):
            watch.start()
            model(x)
            if i >= 5:
                samples.append(watch.stop() * 1e3)
            else:
                watch.stop()
    return statistics.median(samples)


def main() -> None:
    args = step_args(__doc__)
    configure(args.device)
    spec = BackboneSpec.preset("resnet50", **({"width_mult": 0.125, "stem": "small"} if args.tiny else {}))
    size, calls = (32, 3) if args.tiny else (224, 30)
    table = StepTable("8. Deploy latency (eval, bf16, channels-last)",
                      ["model", "batch", "train form ms", "deploy form ms", "train / deploy"],
                      f"{size} px images; {args.device}.", args.out)
    for name, stage_op in (("resnet50 xvol_pssa stage 3", "xvol_pssa"), ("resnet50 all-conv", "conv")):
        torch.manual_seed(0)
        model = build_classifier(spec.with_stage(3, op=stage_op), 1000).to(
            args.device, memory_format=torch.channels_last).eval()
        deployed = reparameterize(model)
        for batch in (1, 64):
            x = torch.randn(batch, 3, size, size, device=args.device).contiguous(memory_format=torch.channels_last)
            train_ms, deploy_ms = latency_ms(model, x, calls), latency_ms(deployed, x, calls)
            table.add([name, batch, f"{train_ms:.2f}", f"{deploy_ms:.2f}", f"{train_ms / deploy_ms:.2f}"])


if __name__ == "__main__":
    main()
