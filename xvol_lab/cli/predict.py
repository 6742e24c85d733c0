"""`lab.py predict`: run an exported model on images or folders of images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.progress import Progress

from xvol_lab.cli.args import positive_int
from xvol_lab.tasks.predict import predict

DESCRIPTION = """\
Run the export EXPORT_DIR (one trial_<n>/ folder of `lab.py study export`, or the study's export
folder when it holds one trial, as it does by default) on INPUTS (image files,
or folders searched recursively), prepared as its validation images were, in batches. Writes into
the new folder --out: classification predictions.csv (top-k classes with probabilities);
detection and instance segmentation images.json, bbox_results.json (and segm_results.json), COCO
results that pycocotools' COCO.loadRes reads; semantic segmentation masks/<name>.png (palette
PNGs, value = label) and classes.txt. Unreadable images are reported and skipped (exit code 2);
the others are written.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` command."""
    p = subparsers.add_parser("predict", help="run an exported model on images", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", metavar="EXPORT_DIR", type=Path,
                   help="a trial folder of `lab.py study export` (or its export folder of one trial)")
    p.add_argument("inputs", metavar="INPUTS", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--out", metavar="DIR", type=Path, required=True,
                   help="new (or empty) folder for the predictions")
    p.add_argument("--onnx", action="store_true",
                   help="run model.onnx with onnxruntime (or model.pt2) instead of deploy.pt")
    p.add_argument("--batch-size", metavar="N", type=positive_int, default=16, help="images per batch (16)")
    p.add_argument("--top-k", metavar="K", type=positive_int, default=5,
                   help="classes listed per image, classification (5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict, print what was written; exit 2 when some images were skipped."""
    with Progress(disable=args.no_progress, transient=True) as bar:
        task = bar.add_task("predicting", total=None)
        result = predict(args.export_dir, args.inputs, args.out, onnx=args.onnx, batch_size=args.batch_size,
                         top_k=args.top_k, on_batch=lambda done, total: bar.update(task, completed=done,
                                                                                   total=total))
    for _, reason in result.skipped:
        print(f"lab.py predict: skipped {reason}", file=sys.stderr)
    print(f"predicted {result.predicted} image(s) into {args.out}"
          + (f"; skipped {len(result.skipped)} unreadable" if result.skipped else ""))
    for path in result.written[:10]:
        print(f"  {path}")
    if len(result.written) > 10:
        print(f"  ... and {len(result.written) - 10} more")
    return 2 if result.skipped else 0
