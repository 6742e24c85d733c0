"""What an exported model says about itself, so that a user with only ``model.onnx`` can run it: the
task, the input (name, layout, size), the preprocessing (resize / crop steps, ``x / 255``, mean and
std), the class list, the architecture spec, the versions it was exported with and the environment
fingerprint of the run that trained it (`xvol_lab.tasks.fingerprint`).

`export_description` builds it once; the model card prints it (`description_lines`) and the ONNX file
carries it as ``metadata_props`` (`onnx_metadata`: one entry per key, structured values as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.export import DataInfo
from xvol_lab.tasks.fingerprint import package_version
from xvol_lab.tasks.registry import task_record

EXPORT_VERSIONS = ("torch", "lightning", "onnx", "onnxruntime", "xvol_lab")


def export_description(config: RunConfig, info: DataInfo | None,
                       fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
    """The description of the export of `config`'s network (module doc). `info` None: the data was not
    there at export, so mean, std and classes are unknown (None)."""
    spec = config.model
    pre = info.preprocess if info is not None else None
    normalised = pre is not None and pre.mean is not None
    return {
        "task": config.task,
        "input": task_record(config.task).onnx_io.format(c=spec.in_chans, s=config.data.image_size),
        "image_size": config.data.image_size,
        "channels": spec.in_chans,
        "scale": "float32 RGB pixels x / 255" + (", then (x - mean) / std per channel" if normalised else ""),
        "mean": list(pre.mean) if pre is not None and pre.mean is not None else None,
        "std": list(pre.std) if pre is not None and pre.std is not None else None,
        "preprocess": pre.to_dict() if pre is not None else None,
        "classes": list(info.classes) if info is not None else None,
        "category_ids": list(info.category_ids) if info is not None and info.category_ids else None,
        "spec": json.loads(spec.to_json()),
        "versions": {name: package_version(name) for name in EXPORT_VERSIONS},
        "fingerprint": dict(fingerprint) if fingerprint is not None else None,
    }


def onnx_metadata(description: Mapping[str, Any]) -> dict[str, str]:
    """`description` as ONNX ``metadata_props``: strings as they are, everything else as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=False)
            for key, value in description.items()}


def description_lines(description: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the model card's "Inputs" and "Environment" sections."""
    pre = description["preprocess"] or {}
    steps = ", ".join(f"{name} {size}" for name, size in pre.get("steps", [])) or "none"
    fingerprint = description["fingerprint"]
    return [
        "## Inputs", "",
        f"- task: {description['task']}; {description['input']}",
        f"- image size: {description['image_size']} px, {description['channels']} channels"
        + ("" if pre.get("fixed_size", True) else " (detectors: one image per call, resized to it)"),
        f"- preprocessing: {steps}; then {description['scale']}",
        f"- mean: {description['mean']}, std: {description['std']}"
        + ("" if description["mean"] is not None else " (unknown: the data was not there at export; "
                                                       "detectors normalise inside the network)"),
        f"- classes (label order): {description['classes']}",
        *([f"- category ids: {description['category_ids']}"] if description["category_ids"] else []), "",
        "## Environment", "",
        "- exported with: " + ", ".join(f"{k} {v}" for k, v in description["versions"].items() if v),
        "- trained in: " + (", ".join(f"{k} {v}" for k, v in fingerprint.items())
                            if fingerprint else "not recorded (no fingerprint.json in the run folder)"),
        "", "`model.onnx` carries all of this in its `metadata_props` (keys: "
        + ", ".join(f"`{key}`" for key in description) + "; structured values as JSON).", "",
    ]


__all__ = ["EXPORT_VERSIONS", "description_lines", "export_description", "onnx_metadata"]
