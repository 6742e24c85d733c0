"""ONNX export of a task's deploy network (or, where its ops do not export to ONNX, a
`torch.export` program), and running the exported model like the network.

Classifier and Semantic FPN: input ``images`` (N, C, S, S), output ``logits``, any batch size.
Faster/Mask R-CNN (torchvision's, traced at opset 17): input ``image`` (C, S, S), one image per
call, outputs ``boxes``, ``labels``, ``scores`` and, for Mask R-CNN, ``masks`` (the network's
eval outputs). The image size is fixed at export. When the ONNX exporter fails, `export_portable` writes
``model.pt2`` (`torch.export`, dynamic batch; classifier and Semantic FPN) and returns the reason.
`write_metadata` / `read_metadata`: the model's ``metadata_props`` (what it is and how to feed it,
`xvol_lab.tasks.describe`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xvol_lab.atomic import atomic_path
from xvol_lab.tasks.registry import task_record

OPSET = 17
DETECTION_OUTPUTS = ("boxes", "labels", "scores")
ONNX_FILE = "model.onnx"
PROGRAM_FILE = "model.pt2"


def export_onnx(network: nn.Module, path: Path, example: Tensor, task: str) -> None:
    """Save `network` (eval) as ONNX at `path`; `example` is one image (C, S, S) of the fixed size."""
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracing notes
        warnings.simplefilter("ignore")
        record = task_record(task)
        if record.takes_image_lists:
            outputs = [*DETECTION_OUTPUTS, *(["masks"] if record.instance_masks else [])]
            torch.onnx.export(network.eval(), ([example],), str(path), opset_version=OPSET, dynamo=False,
                              input_names=["image"], output_names=outputs)
        else:
            torch.onnx.export(network.eval(), (example[None],), str(path), opset_version=OPSET, dynamo=False,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def write_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Set the ``metadata_props`` of the ONNX model at `path` to `props` (replacing any; atomically)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(props))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model at `path`."""
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}


def fixed_size(images: Any, size: int, task: str) -> Any:
    """`images` as the exported model takes them: a detector's list resized to `size` x `size`
    (validation keeps each image's aspect ratio; the export fixes the size); batches unchanged."""
    if not task_record(task).takes_image_lists:
        return images
    return [image if tuple(image.shape[-2:]) == (size, size) else
            F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            for image in images]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def export_portable(network: nn.Module, folder: Path, example: Tensor, task: str) -> tuple[str, str | None]:
    """Write ``model.onnx`` into `folder`, or ``model.pt2`` when ONNX export fails; returns the file
    name and, for the fallback, why ONNX failed. Raises `RuntimeError` when both fail."""
    try:
        export_onnx(network, folder / ONNX_FILE, example, task)
        return ONNX_FILE, None
    except Exception as err:  # the exporter raises many types; the reason goes to the model card
        (folder / ONNX_FILE).unlink(missing_ok=True)
        reason = f"ONNX export failed ({_first_line(err)})"
    if task_record(task).takes_image_lists:
        raise RuntimeError(f"{reason}; torch.export does not take torchvision's detectors "
                           "(data-dependent shapes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(network.eval(), (torch.stack([example, example]),),
                                          dynamic_shapes=({0: torch.export.Dim.AUTO},))
            torch.export.save(program, folder / PROGRAM_FILE)
    except Exception as err:
        raise RuntimeError(f"{reason}; torch.export failed too ({_first_line(err)})") from None
    return PROGRAM_FILE, reason


def load_portable(path: str | Path, task: str) -> Any:
    """The network of an exported ``model.onnx`` (`OnnxNetwork`) or ``model.pt2`` (its module)."""
    if Path(path).suffix == ".onnx":
        return OnnxNetwork(path, task)
    return torch.export.load(str(path)).module()


class OnnxNetwork:
    """An exported ONNX model (onnxruntime, CPU) called like the task's network: a batch tensor ->
    logits, or a list of images -> a list of prediction dicts."""

    def __init__(self, path: str | Path, task: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # no per-call shape notes from the detectors' dynamic outputs
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.takes_image_lists = task_record(task).takes_image_lists
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: Any) -> Any:
        if not self.takes_image_lists:
            return torch.from_numpy(self.session.run(None, {"images": images.cpu().numpy()})[0])
        results = []
        for image in images:
            values = self.session.run(None, {"image": image.cpu().numpy()})
            results.append({name: torch.from_numpy(v) for name, v in zip(self.outputs, values, strict=True)})
        return results


__all__ = ["ONNX_FILE", "OPSET", "PROGRAM_FILE", "OnnxNetwork", "export_onnx", "export_portable",
           "fixed_size", "load_portable", "read_metadata", "write_metadata"]
