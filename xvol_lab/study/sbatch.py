"""The batch script of `lab.py study submit`, and its submission with ``sbatch``.

One job (or each task of a job array) is one worker: the study process runs directly in the
batch script, not under srun, and starts each multi-process trial as an ``srun`` step
(`xvol_lab.study.slurm`). The job asks for the preemption signal (``--signal=B:USR1@120``, less for a short
``--time``: `signal_option`): the
script turns it into SIGTERM for the study process, which hands its trial back to the study (run
again by the next worker), then requeues the job (``--requeue``), which resumes the study.

The script names the storage as ``--storage-file PATH`` or leaves it to ``$XVOL_STORAGE``
(exported by sbatch), so it never holds the database password.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from xvol_lab.errors import ConfigError
from xvol_lab.study.storage import STORAGE_ENV

SIGNAL_LEAD_S = 120  # USR1 to the batch shell this long before the time limit (a quarter of a short one)
_TIME = re.compile(r"(?:(?P<days>\d+)-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d{1,2})(?::(?P<c>\d{1,2}))?)?)")
_PARTITION = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Resources:
    """What one worker's job asks SLURM for (the options of `lab.py study submit`)."""

    nodes: int
    gpus_per_node: int
    array: int | None = None
    time: str | None = None
    partition: str | None = None
    cpus_per_gpu: int = 4

    @property
    def tasks_per_node(self) -> int:
        """Trial processes per node: one per GPU, one on a CPU-only job."""
        return max(1, self.gpus_per_node)


def _integer(flag: str, text: str | int | None, minimum: int) -> int | None:
    if text is None:
        return None
    value = str(text).strip()
    if not re.fullmatch(r"-?\d+", value) or int(value) < minimum:
        raise ConfigError(f"{flag} {text}: expected a whole number >= {minimum}")
    return int(value)


def seconds(text: str) -> int | None:
    """The seconds of a time limit that `check_time` accepted; None for UNLIMITED / INFINITE."""
    match = _TIME.fullmatch(text)
    if match is None:
        return None
    g = {k: int(v) if v is not None else None for k, v in match.groupdict().items()}
    if g["days"] is not None:
        return ((g["days"] * 24 + g["dh"]) * 60 + (g["dm"] or 0)) * 60 + (g["ds"] or 0)
    if g["c"] is not None:
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]  # HH:MM:SS
    if g["b"] is not None:
        return g["a"] * 60 + g["b"]  # MM:SS
    return g["a"] * 60  # minutes


def signal_option(time_limit: str | None) -> str:
    """``B:USR1@<lead>``: USR1 to the batch shell `SIGNAL_LEAD_S` before the time limit, or a quarter
    of a limit shorter than 8 minutes: with 120 s of a 2-minute limit every requeued attempt would be
    told to stop as it starts, and the study would never move on."""
    limit = None if time_limit is None else seconds(time_limit)
    lead = SIGNAL_LEAD_S if limit is None else max(10, min(SIGNAL_LEAD_S, limit // 4))
    return f"B:USR1@{lead}"


def check_time(text: str) -> str:
    """`text` if SLURM accepts it as a time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return text
    match = _TIME.fullmatch(text)
    expected = "expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
    if match is None:
        raise ConfigError(f"--time {text}: {expected}")
    g = match.groupdict()
    if g["days"] is not None:
        bounded = [(g["dh"], 24), (g["dm"], 60), (g["ds"], 60)]
    else:
        bounded = [(g["c"], 60), (g["b"], 60)] if g["c"] is not None else [(g["b"], 60)]
    for value, bound in bounded:
        if value is not None and int(value) >= bound:
            raise ConfigError(f"--time {text}: {value} is out of range (< {bound}); {expected}")
    return text


def resources(nodes: str | int, gpus_per_node: str | int, *, array: str | int | None = None,
              time_limit: str | None = None, partition: str | None = None,
              cpus_per_gpu: str | int = 4) -> Resources:
    """Checked `Resources` from the command-line values (ConfigError for what SLURM would reject)."""
    if partition is not None and not _PARTITION.fullmatch(partition):
        raise ConfigError(f"--partition {partition}: expected a partition name (letters, digits, _ . -), "
                          "or several separated by commas")
    return Resources(nodes=_integer("--nodes", nodes, 1),
                     gpus_per_node=_integer("--gpus-per-node", gpus_per_node, 0),
                     array=_integer("--array", array, 1), partition=partition,
                     time=None if time_limit is None else check_time(time_limit),
                     cpus_per_gpu=_integer("--cpus-per-gpu", cpus_per_gpu, 1))


def check_storage(res: Resources, storage_file: Path | None, env: Mapping[str, str]) -> None:
    """Several workers need a server storage: SQLite's locking is not reliable across the nodes of a
    network file system (ConfigError for an array with the default SQLite storage)."""
    if res.array and res.array > 1 and storage_file is None and not env.get(STORAGE_ENV):
        raise ConfigError(f"--array {res.array}: workers on several nodes need a server storage (SQLite's "
                          f"locking is not reliable on network file systems); set ${STORAGE_ENV} or give "
                          "--storage-file")


def batch_script(study_args: Sequence[str], name: str, res: Resources, *, runs: Path, workdir: Path,
                 python: str, lab: Path, storage_file: Path | None, storage_in_env: bool) -> str:
    """The batch script of one worker of study `name`; `study_args` name the study for `study run`
    (its file, ``--set`` overrides). The storage is `storage_file`, else ``$XVOL_STORAGE``
    (`storage_in_env`), else the SQLite file in the runs folder."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"study {name!r}: expected a name of letters, digits, _ . - for the job name")
    folder = (runs / name).resolve()
    log = folder / ("slurm-%A_%a.out" if res.array else "slurm-%j.out")
    lines = ["#!/bin/bash",
             f"# One worker of study {name}; its trials run as srun steps. Written by `lab.py study submit`.",
             f"#SBATCH --job-name=xvol-{name}",
             f"#SBATCH --nodes={res.nodes}",
             f"#SBATCH --ntasks-per-node={res.tasks_per_node}",
             f"#SBATCH --cpus-per-task={res.cpus_per_gpu}"]
    if res.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={res.gpus_per_node}")
    if res.time is not None:
        lines.append(f"#SBATCH --time={res.time}")
    if res.partition is not None:
        lines.append(f"#SBATCH --partition={res.partition}")
    if res.array:
        lines.append(f"#SBATCH --array=0-{res.array - 1}")
    lines += [f"#SBATCH --signal={signal_option(res.time)}", "#SBATCH --requeue", "#SBATCH --open-mode=append",
              "#SBATCH --export=ALL", f"#SBATCH --output={log}", "", "set -uo pipefail",
              f"cd {shlex.quote(str(workdir.resolve()))}"]
    command = [python, str(lab), "study", "run", *study_args, "--devices", str(res.tasks_per_node), "--nodes",
               str(res.nodes), "--runs", str(runs.resolve()), "--no-live"]
    if storage_file is not None:
        command += ["--storage-file", str(storage_file.resolve())]
    elif storage_in_env:
        lines.append(f': "${{{STORAGE_ENV}:?is not set: export it before sbatch, or submit with '
                     '--storage-file}"')
    else:
        lines.append(f"# storage: the SQLite file {folder / 'study.db'}")
    lines += [
        "",
        "# the study process runs here, not under srun; USR1 (the time limit is near) hands its trial",
        "# back to the study, then the job is requeued and resumes the study",
        f"{shlex.join(command)} &",
        "worker=$!",
        "requeue=0",
        "trap 'requeue=1; kill -TERM \"$worker\" 2>/dev/null' USR1",
        "status=0",
        "wait \"$worker\" || status=$?",
        "while kill -0 \"$worker\" 2>/dev/null; do  # a trapped signal ended the wait, not the worker",
        "    status=0; wait \"$worker\" || status=$?",
        "done",
        "if [ \"$requeue\" = 1 ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi",
        "exit \"$status\"",
    ]
    return "\n".join(lines) + "\n"


def script_path(runs: Path, name: str) -> Path:
    """A new ``<runs>/<name>/submit_<timestamp>.sbatch`` (``-2``, ``-3``, ... when one exists)."""
    stem = f"submit_{time.strftime('%Y%m%d-%H%M%S')}"
    path = runs / name / f"{stem}.sbatch"
    n = 2
    while path.exists():
        path = runs / name / f"{stem}-{n}.sbatch"
        n += 1
    return path


def check_request(text: str, res: Resources) -> None:
    """Ask ``sbatch --test-only`` (where sbatch exists) whether the cluster can ever run the job of
    batch script `text`; ConfigError, with SLURM's answer, for one it cannot (e.g. more CPUs or GPUs
    per node than a node has): such a job would be accepted and pend forever."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return
    done = subprocess.run([sbatch, "--test-only"], input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[:300]
        asked = (f"--nodes {res.nodes} --gpus-per-node {res.gpus_per_node} --cpus-per-gpu {res.cpus_per_gpu}"
                 + (f" --partition {res.partition}" if res.partition else "") + (f" --time {res.time}" if res.time
                                                                                    else ""))
        raise ConfigError(f"{asked}: SLURM cannot run this job ({detail}); ask for what a node of the "
                          "partition has (`sinfo -o '%P %c %m %G'`)")


def submit(script: Path) -> str | None:
    """Submit `script` with ``sbatch``; its job id, or None where there is no sbatch."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return None
    done = subprocess.run([sbatch, "--parsable", str(script.resolve())], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[:300]
        raise ConfigError(f"sbatch {script}: refused ({detail})")
    return done.stdout.strip().split(";")[0]
