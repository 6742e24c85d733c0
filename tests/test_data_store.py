"""Generated datasets on disk: atomic, lock-protected, and checked against their parameters."""

import json
import os
from pathlib import Path

import pytest
from _helpers import writes_by_concurrent_callers

from xvol_lab.data import DataConfig, dataset_dir, generate
from xvol_lab.data import generated as store
from xvol_lab.errors import ConfigError


def small(root: Path, **changes) -> DataConfig:
    fields = {"root": str(root), "num_train": 20, "num_val": 10, "num_workers": 0} | changes
    return DataConfig(**fields)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(cfg: DataConfig) -> list[str]:
    return sorted(p.name for p in dataset_dir(cfg).parent.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_generation_leaves_nothing_that_loads(tmp_path, monkeypatch, interrupt):
    cfg = small(tmp_path)
    real = store.DRAWERS["shapes"]
    calls = []

    def failing_draw(*args):
        calls.append(1)
        if len(calls) == 17:
            raise interrupt
        return real.draw(*args)

    failing = store.Drawer(real.version, real.class_names, failing_draw)
    monkeypatch.setitem(store.DRAWERS, "shapes", failing)
    with pytest.raises(type(interrupt)):
        generate(cfg)
    assert len(calls) == 17
    assert not dataset_dir(cfg).exists()
    assert leftovers(cfg) == []
    with pytest.raises(ConfigError, match="no dataset at .*c10-s32-n20-v10-seed0; run `python lab.py data"):
        store.read_generated(cfg)

    monkeypatch.setitem(store.DRAWERS, "shapes", real)
    assert tree(generate(cfg)) == tree(generate(small(tmp_path / "fresh")))
    assert len(store.read_generated(cfg).samples["train"]) == 20


def test_a_killed_runs_temp_folder_is_cleaned_up(tmp_path):
    cfg = small(tmp_path)
    stale = dataset_dir(cfg).parent / f".{dataset_dir(cfg).name}.tmp-killed"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "half.png").write_bytes(b"\x89PNG")
    generate(cfg)
    assert leftovers(cfg) == []
    assert (dataset_dir(cfg) / "manifest.json").is_file()


def test_existing_dataset_is_reused_untouched(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    folder = generate(cfg)
    stamp = os.stat(folder / "manifest.json").st_mtime_ns
    monkeypatch.setattr(store, "_write", lambda *a: pytest.fail("regenerated an existing dataset"))
    assert generate(cfg) == folder
    assert os.stat(folder / "manifest.json").st_mtime_ns == stamp


def test_concurrent_generators_make_the_dataset_once(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    assert writes_by_concurrent_callers(store, generate, cfg, tmp_path / "writes.log", monkeypatch) == 1
    assert leftovers(cfg) == []
    assert tree(dataset_dir(cfg)) == tree(generate(small(tmp_path / "single")))


def test_a_folder_from_other_parameters_is_refused(tmp_path):
    cfg = small(tmp_path)
    folder = generate(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"manifest.json: made by .*'version': 0.*delete .* to regenerate$"):
        generate(cfg)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"manifest.json: unreadable manifest"):
        store.read_generated(cfg)


def test_a_folder_without_manifest_is_refused(tmp_path):
    cfg = small(tmp_path)
    dataset_dir(cfg).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"exists but has no manifest.json; delete it to regenerate$"):
        generate(cfg)


def test_missing_dataset_lists_the_ones_that_exist(tmp_path):
    generate(small(tmp_path))
    with pytest.raises(ConfigError, match=r"no dataset at .*seed1 \(found: c10-s32-n20-v10-seed0\)"):
        store.read_generated(small(tmp_path, seed=1))


def test_index_and_manifest_must_agree(tmp_path):
    cfg = small(tmp_path)
    folder = generate(cfg)
    lines = (folder / "index.csv").read_text().splitlines(keepends=True)
    (folder / "index.csv").write_text("".join(lines[:-1]))
    with pytest.raises(ConfigError, match=r"index.csv: \{'train': 20, 'val': 9\} images, manifest.json says"):
        store.read_generated(cfg)
    (folder / "index.csv").write_text("split,path,label\nval,x.png,notanumber\n")
    with pytest.raises(ConfigError, match=r"index.csv: unreadable index \(ValueError"):
        store.read_generated(cfg)


def test_real_datasets_are_not_generated(tmp_path):
    with pytest.raises(ConfigError, match="'cifar10' is not a synthetic dataset"):
        generate(small(tmp_path, name="cifar10"))
