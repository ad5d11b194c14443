"""The journal file: the right lock per file system, a crashed writer's lock broken, no garbled records under
many concurrent writers (Optuna #5138, #5921)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock

from sweeplight._storage import filesystem, journal_lock, open_storage, storage_warnings
from sweeplight._trial_resume import weights_only

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
srv:/export/home /home nfs4 rw,vers=4.2,hard 0 0
srv:/old /mnt/old nfs rw,vers=2,hard 0 0
lustre@o2ib:/scratch /scratch lustre rw,flock 0 0
/dev/sdb1 /data/my\\040disk ext4 rw 0 0
sshfs#me@host: /mnt/remote fuse.sshfs rw 0 0
"""

WRITER = """
import sys, optuna
from sweeplight._storage import open_storage
storage = open_storage(sys.argv[1])
study = optuna.load_study(study_name="load", storage=storage)
for i in range(int(sys.argv[2])):
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("writer", int(sys.argv[3]))
    trial.report(x / 2, 0)
    study.tell(trial, x)
"""


@pytest.fixture
def mounts(tmp_path: Path) -> str:
    path = tmp_path / "mounts"
    path.write_text(MOUNTS)
    return str(path)


def test_filesystem_is_the_longest_mount_point(mounts):
    assert filesystem(Path("/home/me/runs/study.db"), mounts).fstype == "nfs4"
    assert filesystem(Path("/homework/x"), mounts).fstype == "ext4"  # a prefix of the text is not a mount
    assert filesystem(Path("/data/my disk/study.db"), mounts).point == "/data/my disk"
    assert filesystem(Path("/mnt/remote/x.db"), mounts).networked
    assert not filesystem(Path("/tmp/x.db"), mounts).networked


def test_sqlite_on_a_network_file_system_warns(mounts):
    for place in ("/home/me/runs/study.db", "/scratch/me/study.db", "/mnt/remote/study.db"):
        (warning,) = storage_warnings(f"sqlite:///{place}", mounts)
        assert "SQLite's file locking is unsafe" in warning and "use a journal file (storage: study.log)" in warning
    assert storage_warnings("sqlite:////tmp/study.db", mounts) == []
    assert storage_warnings("journal:////home/me/study.log", mounts) == []  # the journal is the safe choice there


def test_lock_follows_the_file_system(mounts):
    assert isinstance(journal_lock("journal:////home/me/study.log", mounts), JournalFileOpenLock)
    assert isinstance(journal_lock("journal:////mnt/old/study.log", mounts), JournalFileSymlinkLock)  # NFSv2
    lock = journal_lock("journal:////home/me/study.log?lock=symlink&grace=10", mounts)
    assert isinstance(lock, JournalFileSymlinkLock) and lock.grace_period == 10


def test_a_crashed_writers_lock_is_broken_after_the_grace_period(tmp_path):
    log = tmp_path / "study.log"
    url = f"journal:///{log}?grace=3"
    optuna.create_study(study_name="s", storage=open_storage(url))
    os.close(os.open(f"{log}.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # a writer died holding the lock
    start = time.monotonic()
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    waited = time.monotonic() - start
    assert 2.5 <= waited < 15
    assert len(optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()) == 2
    assert not Path(f"{log}.lock").exists()


@pytest.mark.slow
def test_many_concurrent_writers_lose_and_garble_nothing(tmp_path):
    url = f"journal:///{tmp_path / 'study.log'}"
    optuna.create_study(study_name="load", storage=open_storage(url))
    writers, each = 8, 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(each), str(i)], stderr=subprocess.PIPE,
                              text=True) for i in range(writers)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    lines = (tmp_path / "study.log").read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every record whole
    assert len(records) >= writers * each * 4
    trials = optuna.load_study(study_name="load", storage=open_storage(url)).get_trials()
    assert sorted(t.number for t in trials) == list(range(writers * each))
    assert all(t.state.name == "COMPLETE" and t.intermediate_values == {0: t.value / 2} for t in trials)
    per_writer = {i: sum(t.user_attrs["writer"] == i for t in trials) for i in range(writers)}
    assert per_writer == dict.fromkeys(range(writers), each)


class _Opaque:
    """A Python object in a checkpoint: weights_only=True refuses it."""


def test_checkpoints_load_weights_only_unless_they_hold_objects(tmp_path, capsys):
    import torch

    plain, pickled = tmp_path / "plain.ckpt", tmp_path / "pickled.ckpt"
    torch.save({"epoch": 3, "state_dict": {"w": torch.zeros(2)}}, plain)
    torch.save({"epoch": 3, "hyper_parameters": {"thing": _Opaque()}}, pickled)
    assert weights_only(plain) is True
    assert weights_only(pickled) is False
    assert "holds Python objects" in capsys.readouterr().out


def test_batched_write_to_a_trial_another_process_just_finished(tmp_path):
    """One worker's batched result (sweeplight/_writes.py) races another process that failed the trial as stale:
    the write is refused, the records it appended are harmless, and the worker's storage keeps working."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from sweeplight._writes import create_running_trial, finish_trial

    url = f"journal:///{tmp_path / 'study.log'}"
    mine, theirs = open_storage(url), open_storage(url)
    study = optuna.create_study(storage=mine, study_name="race")
    trial_id = create_running_trial(mine, study._study_id, {"sweeplight:heartbeat": 1.0})
    theirs.get_all_trials(study._study_id)
    theirs.set_trial_state_values(trial_id, TrialState.FAIL)  # not yet read by `mine`
    with pytest.raises(UpdateFinishedTrialError):
        finish_trial(mine, trial_id, TrialState.COMPLETE, [1.0], system={"a": 1, "b": 2})
    (trial,) = mine.get_all_trials(study._study_id)  # no record of ours left to raise later
    assert trial.state == TrialState.FAIL and "a" not in trial.system_attrs
    (seen,) = open_storage(url).get_all_trials(study._study_id)
    assert seen.state == TrialState.FAIL and seen.values is None and "a" not in seen.system_attrs
