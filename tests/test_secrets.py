"""The storage URL's password stays secret: it comes from $XVOL_STORAGE or a private --storage-file,
and no output, log, run file or trial attribute shows it (masked as ***, parseable URL or not)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest

from xvol_lab.cli import main
from xvol_lab.study import storage
from xvol_lab.study.storage import STORAGE_ENV, default_storage_url, redact, shown_url

SECRET = "S3cr3t-pw-" + uuid.uuid4().hex[:8]


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql+psycopg://alice:{SECRET}@db.example:5432/lab", "postgresql+psycopg://alice:***@db.example:5432/lab"),
    (f"postgresql+psycopg://alice:{SECRET}@db.example:notaport/lab",  # no parser accepts it
     "postgresql+psycopg://alice:***@db.example:notaport/lab"),
    (f"postgresql://alice:p@{SECRET}@db/lab", "postgresql://alice:***@db/lab"),  # unencoded @ in the password
    (f"mysql+pymysql://db/lab?user=alice&password={SECRET}", "mysql+pymysql://db/lab?user=alice&password=***"),
    ("sqlite:////srv/runs/s/study.db", "sqlite:////srv/runs/s/study.db"),
    ("postgresql://alice@db/lab", "postgresql://alice@db/lab"),
])
def test_shown_url_masks_the_password_parseable_or_not(url, shown):
    assert shown_url(url) == shown


def test_redact_masks_the_password_in_driver_messages():
    url = f"postgresql+psycopg://alice:{SECRET}%21@db/lab"
    text = f"could not parse {url}; password {SECRET}! rejected"
    assert redact(text, url) == "could not parse postgresql+psycopg://alice:***@db/lab; password *** rejected"


def test_xvol_storage_is_the_default_storage(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert default_storage_url(tmp_path, "s") == f"sqlite:///{tmp_path.resolve()}/s/study.db"
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg://alice@db/lab")
    assert default_storage_url(tmp_path, "s") == "postgresql+psycopg://alice@db/lab"


def test_a_storage_file_others_can_read_is_refused(tmp_path, tiny_study, capsys):
    path = tiny_study("s")
    secret_file = tmp_path / "storage.url"
    secret_file.write_text(f"# the lab's database\n\npostgresql+psycopg://alice:{SECRET}@db/lab\n")
    secret_file.chmod(0o644)
    assert main(["study", "status", str(path), "--storage-file", str(secret_file)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"lab.py: error: --storage-file {secret_file}: group or others can read it "
                                "(mode 0644); expected a file only its owner can read "
                                f"(chmod 600 {secret_file})"]
    secret_file.chmod(0o600)
    assert storage.read_storage_file(secret_file) == f"postgresql+psycopg://alice:{SECRET}@db/lab"


def test_storage_file_names_the_storage_to_use(tmp_path, tiny_study, capsys):
    path = tiny_study("s")
    db = tmp_path / "elsewhere" / "s.db"
    db.parent.mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    secret_file = tmp_path / "storage.url"
    secret_file.write_text(f"sqlite:///{db}\n")
    secret_file.chmod(0o600)
    args = ["study", "status", str(path), "--storage-file", str(secret_file), "--runs", str(tmp_path)]
    assert main(args) == 0
    assert f"[sqlite:///{db}]" in capsys.readouterr().out.replace("\n", "")


def assert_secret_absent(outputs: list[str], folder: Path) -> None:
    for text in outputs:
        assert SECRET not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_password_of_an_unreachable_or_unparseable_server_is_never_shown(tmp_path, tiny_study, monkeypatch,
                                                                          capsys, caplog):
    """One clear line and exit 2, with the password masked, whatever the URL's source."""
    monkeypatch.setattr(storage, "OPEN_ATTEMPTS", 1)  # no retry of the refused connection
    monkeypatch.chdir(tmp_path)
    path = tiny_study("s")
    refused = f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:9/lab"
    (tmp_path / "storage.url").write_text(f"postgresql+psycopg://alice:{SECRET}@db:notaport/lab\n")
    (tmp_path / "storage.url").chmod(0o600)
    sources = {"env": [], "file": ["--storage-file", "storage.url"], "argv": ["--storage", refused]}
    for source, args in sources.items():
        monkeypatch.delenv(STORAGE_ENV, raising=False)
        if source == "env":
            monkeypatch.setenv(STORAGE_ENV, refused)
        caplog.clear()
        assert main(["study", "run", str(path), "--runs", "runs", "--no-live", *args]) == 2, source
        out, err = capsys.readouterr()
        line = err.splitlines()[-1]
        assert line.startswith({"env": "lab.py: error: $XVOL_STORAGE (postgresql+psycopg://alice:***@",
                                "file": "lab.py: error: --storage-file storage.url: not a storage URL",
                                "argv": "lab.py: error: --storage postgresql+psycopg://alice:***@"}[source]), line
        assert ("cannot open" in line) == (source != "file")  # the file's URL does not parse: not shown
        assert ("--storage carries a password" in caplog.text) == (source == "argv")
        assert_secret_absent([out, err, caplog.text], tmp_path / "runs")


POSTGRES = os.environ.get("XVOL_TEST_POSTGRES_URL")


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES, reason="XVOL_TEST_POSTGRES_URL is not set (postgresql+psycopg://...)")
def test_a_study_on_a_password_storage_shows_the_password_nowhere(tmp_path, tiny_study, monkeypatch, capsys,
                                                                   caplog):
    """A real run (its log lines and final status) and its report, the URL from $XVOL_STORAGE (the
    CI server trusts local connections, so any password connects; elsewhere give a URL whose
    password is distinctive). Trial processes write their output to trial.log under runs/."""
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES)
    if len(url.password or "") < 8:
        url = url.set(password=SECRET)
    secret, url_text = url.password, url.render_as_string(hide_password=False)
    try:
        optuna.storages.RDBStorage(url_text)
    except Exception:
        pytest.skip("the server checks passwords: give XVOL_TEST_POSTGRES_URL a password of 8+ characters")
    name = f"secret_{uuid.uuid4().hex[:8]}"
    path = tiny_study(name, budget={"n_trials": 1, "epochs": 1})
    monkeypatch.setenv(STORAGE_ENV, url_text)
    runs = str(tmp_path / "runs")
    try:
        assert main(["-v", "study", "run", str(path), "--no-live", "--runs", runs]) == 0
        assert main(["study", "report", str(path), "--runs", runs]) == 0
        out, err = capsys.readouterr()
        trial = optuna.load_study(study_name=name, storage=url_text).get_trials()[0]
        assert "***" in (tmp_path / "runs" / name / "report" / "report.md").read_text()
        assert (tmp_path / "runs" / name).is_dir()
        for text in (out, err, caplog.text, repr(trial.user_attrs), repr(trial.system_attrs)):
            assert secret not in text
        assert_secret_absent([], tmp_path / "runs")
    finally:
        optuna.delete_study(study_name=name, storage=url_text)


@pytest.mark.parametrize("source", ["env", "file", "argv"])
def test_an_unencoded_at_in_the_password_is_refused_and_no_fragment_shown(tmp_path, tiny_study, monkeypatch,
                                                                         capsys, caplog, source):
    """The driver took the part of the password after an unencoded '@' for the host name and printed
    it ("failed to resolve host"), where the mask (up to the last '@') did not reach it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    path = tiny_study("s")
    half, other = SECRET[:9], SECRET[9:]
    url = f"postgresql+psycopg://alice:{half}@{other}@db.invalid:5432/lab"
    (tmp_path / "storage.url").write_text(url + "\n")
    (tmp_path / "storage.url").chmod(0o600)
    args = {"env": [], "file": ["--storage-file", "storage.url"], "argv": ["--storage", url]}[source]
    if source == "env":
        monkeypatch.setenv(STORAGE_ENV, url)
    assert main(["study", "run", str(path), "--runs", "runs", "--no-live", *args]) == 2
    out, err = capsys.readouterr()
    where = {"env": "$XVOL_STORAGE", "file": "--storage-file storage.url", "argv": "--storage"}[source]
    assert err.splitlines()[-1] == (
        f"lab.py: error: {where}: the storage URL does not parse as written: its password holds an "
        "unencoded '@' (percent-encode it as %40); the URL is not shown, as it holds a password")
    for text in (out, err, caplog.text):
        assert half not in text and other not in text
    assert not (tmp_path / "runs").exists()
