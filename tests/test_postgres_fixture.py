"""The PostgreSQL test server itself: real connections, real passwords, a real outage and restart."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import psycopg2
import pytest
import sqlalchemy

if TYPE_CHECKING:  # at run time pytest_plugins imports it, first, as pytest wants (no PytestAssertRewriteWarning)
    from tests.postgres import PostgresServer

# Until tests/conftest.py loads the plugin for every module; loading it twice is harmless.
pytest_plugins = ["tests.postgres"]

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _connect(server: PostgresServer, *, password: str | None = None, dbname: str | None = None):
    return psycopg2.connect(host=server.host, port=server.port, user=server.user, dbname=dbname or server.dbname,
                            password=server.password if password is None else password, connect_timeout=3)


def _study_with_trials(url: str, n: int) -> None:
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=n)
    storage.engine.dispose()


def _values(url: str) -> list[float]:
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name="s", storage=storage).trials
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        return [t.value for t in trials]
    finally:
        storage.engine.dispose()


def test_password_login_over_tcp(postgres_server: PostgresServer) -> None:
    with _connect(postgres_server) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), inet_server_port()")
        assert cur.fetchone() == ("sweeplight", "sweeplight_test", postgres_server.port)
    conn.close()
    # The password holds '@' and '/': the URL encodes it, and SQLAlchemy decodes it back.
    url = sqlalchemy.make_url(postgres_server.url)
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "sweeplight", "s3cret-P@ss/word", "127.0.0.1", postgres_server.port, "sweeplight_test")
    assert "s3cret" not in postgres_server.url_without_password
    engine = sqlalchemy.create_engine(postgres_server.url)
    with engine.connect() as sa_conn:
        assert sa_conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_wrong_password_is_refused(postgres_server: PostgresServer) -> None:
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _connect(postgres_server, password="wrong")
    wrong = postgres_server.url.replace("s3cret", "S3CRET")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        optuna.storages.RDBStorage(wrong)


def test_optuna_study_persists(postgres_url: str) -> None:
    _study_with_trials(postgres_url, 3)
    values = _values(postgres_url)  # a new storage object, new connections: read back from the server
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)


def test_stop_cuts_connections_and_start_restores_data(postgres_server: PostgresServer, postgres_url: str) -> None:
    _study_with_trials(postgres_url, 2)
    before, port = _values(postgres_url), postgres_server.port
    dbname = sqlalchemy.make_url(postgres_url).database
    open_conn = _connect(postgres_server, dbname=dbname)
    postgres_server.stop()
    try:
        assert not postgres_server.running
        with pytest.raises(psycopg2.OperationalError):
            _connect(postgres_server, dbname=dbname)
        with pytest.raises(psycopg2.OperationalError), open_conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        open_conn.close()
        postgres_server.start()
    assert postgres_server.running and postgres_server.port == port
    assert _values(postgres_url) == before


def test_new_databases_are_isolated(postgres_server: PostgresServer) -> None:
    names = [f"iso_{i}_{uuid.uuid4().hex[:8]}" for i in range(2)]
    first, second = (postgres_server.new_database(name) for name in names)
    try:
        assert first != second and first.endswith(names[0])
        _study_with_trials(first, 1)
        assert optuna.get_all_study_names(first) == ["s"]
        with _connect(postgres_server, dbname=names[1]) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert cur.fetchone() == (0,)
        conn.close()
    finally:
        for name in names:
            postgres_server.drop_database(name)


def test_new_database_rejects_a_name_postgres_would_truncate(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="at most 63"):
        postgres_server.new_database("x" * 64)


def test_a_killed_sessions_server_is_reaped_by_the_next() -> None:
    from tests.postgres import PostgresServer, _prepare_base, _reap_orphans, find_bindir

    bindir = find_bindir()
    assert bindir is not None
    orphan = PostgresServer(bindir=bindir, base=_prepare_base())
    try:
        orphan.initialize()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        (orphan.base / "owner.pid").write_text(dead.stdout.strip())  # as if pytest had been SIGKILLed
        _reap_orphans(bindir)
        assert not orphan.base.exists()
        with pytest.raises(psycopg2.OperationalError):
            _connect(orphan)
    finally:
        orphan.destroy()


def test_missing_binaries_fail_rather_than_skip(tmp_path: Path) -> None:
    test = tmp_path / "test_needs_postgres.py"
    test.write_text('pytest_plugins = ["tests.postgres"]\n\ndef test_it(postgres_url):\n    pass\n')
    env = {**os.environ, "SWEEPLIGHT_PG_BINDIR": str(tmp_path / "empty"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    assert "apt-get install postgresql-15" in result.stdout
