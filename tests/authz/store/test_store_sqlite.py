"""What only the SQLite store does: URL forms, pragmas, migrations, several processes, crash durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from authz.store.base import IssuedToken, LogQuery, Store, open_store
from authz.store.errors import StoreConflict, StoreError
from authz.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[3]


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class TestUrls:
    def test_relative_path_and_parent_directory(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """sqlite:///rel/path.db is relative to the working directory; missing parents are created."""
        monkeypatch.chdir(tmp_path)
        store = open_store("sqlite:///.scopegate/deep/state.db")
        store.put_object("group", "g", {}, "config")
        store.close()
        assert (tmp_path / ".scopegate" / "deep" / "state.db").is_file()

    def test_absolute_path(self, tmp_path: Path) -> None:
        """sqlite:////abs/path.db names an absolute path."""
        store = open_store(f"sqlite:///{tmp_path}/abs.db")
        assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/abs.db"
        store.close()
        assert (tmp_path / "abs.db").is_file()

    def test_memory_is_one_database_for_every_thread(self) -> None:
        """sqlite:///:memory: is one shared database, visible from worker threads too."""
        store = open_store("sqlite:///:memory:")
        store.put_object("group", "g", {}, "config")
        seen: list[object] = []
        thread = threading.Thread(target=lambda: seen.append(store.get_object("group", "g")))
        thread.start()
        thread.join()
        assert seen[0] is not None
        store.close()

    @pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://relative.db"])
    def test_malformed_url(self, url: str) -> None:
        """A malformed sqlite URL is a StoreError that shows the accepted forms."""
        with pytest.raises(StoreError, match=r"expected sqlite:///relative/path\.db"):
            open_store(url)

    def test_unknown_scheme(self) -> None:
        """An unknown scheme is a StoreError naming both accepted schemes."""
        with pytest.raises(StoreError, match="unknown scheme"):
            open_store("mysql://db/x")

    def test_path_under_a_file_is_one_clear_line(self, tmp_path: Path) -> None:
        """A directory that cannot be created is reported in one line naming the store and the cause."""
        (tmp_path / "file").write_text("")
        with pytest.raises(StoreError) as info:
            open_store(f"sqlite:///{tmp_path}/file/sub/state.db")
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"cannot open store sqlite:///{tmp_path}/file/sub/state.db")
        assert "Not a directory" in message

    def test_unopenable_database_is_one_clear_line(self, tmp_path: Path) -> None:
        """A path SQLite cannot open (here, a directory) is reported with SQLite's reason in one line."""
        (tmp_path / "dir.db").mkdir()
        with pytest.raises(StoreError) as info:
            open_store(f"sqlite:///{tmp_path}/dir.db")
        message = str(info.value)
        assert "\n" not in message
        assert message == f"cannot open store sqlite:///{tmp_path}/dir.db: unable to open database file"

    def test_not_a_database(self, tmp_path: Path) -> None:
        """A file that is not an SQLite database is a StoreError, not a traceback from sqlite3."""
        (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
        with pytest.raises(StoreError, match="file is not a database"):
            open_store(f"sqlite:///{tmp_path}/junk.db")


class TestSchema:
    def test_durability_pragmas(self, tmp_path: Path) -> None:
        """The file is in WAL mode and every connection syncs fully on commit and enforces foreign keys."""
        store = SqliteStore(f"sqlite:///{tmp_path}/s.db")
        conn = store._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        store.close()

    def test_reopen_keeps_schema_version(self, tmp_path: Path) -> None:
        """Opening an up-to-date store again applies no migration twice."""
        url = f"sqlite:///{tmp_path}/s.db"
        open_store(url).close()
        open_store(url).close()
        versions = sqlite3.connect(tmp_path / "s.db").execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(1,), (2,)]

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        """A store written by a newer scopegate is refused with a message that says so."""
        url = f"sqlite:///{tmp_path}/s.db"
        open_store(url).close()
        with sqlite3.connect(tmp_path / "s.db") as conn:
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (99, 0)")
        with pytest.raises(StoreConflict, match="schema version 99, written by a newer scopegate"):
            open_store(url)


class TestProcesses:
    def test_token_seq_increases_across_processes(self, tmp_path: Path) -> None:
        """Two processes allocating at once never hand out the same number, and each sees its own increase."""
        url = f"sqlite:///{tmp_path}/s.db"
        open_store(url).close()
        code = """
            import sys
            from authz.store.base import open_store
            store = open_store(sys.argv[1])
            print(" ".join(str(store.allocate_token_seq()) for _ in range(200)))
        """
        procs = [run_python(code, url) for _ in range(3)]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
        runs = [[int(n) for n in out.split()] for out, _ in outputs]
        assert all(run == sorted(run) for run in runs)
        every = [n for run in runs for n in run]
        assert sorted(every) == list(range(1, 601))

    def test_sigkill_loses_no_committed_write(self, tmp_path: Path) -> None:
        """A process killed with SIGKILL keeps every write whose commit returned: object, token, feed, log."""
        url = f"sqlite:///{tmp_path}/s.db"
        code = """
            import sys
            from authz.store.base import IssuedToken, open_store
            store = open_store(sys.argv[1])
            i = 0
            while True:
                with store.transaction() as tx:
                    seq = tx.allocate_token_seq()
                    tx.put_object("user", f"u{i}", {"id": f"u{i}"}, "api", secret_hash=f"h{i}")
                    tx.record_token(IssuedToken(jti=f"AT.{seq:x}.r", as_id="orders", client_id="web",
                                                user_id=f"u{i}", scopes=("s",), issued_at=1.0, expires_at=2e9,
                                                seq=seq))
                    tx.append_change("revoke_jti", {"jti": f"AT.{seq:x}.r", "exp": 2e9})
                    tx.append_log({"uuid": f"e{i}"}, float(i))
                print(i, flush=True)
                i += 1
        """
        proc = run_python(code, url)
        assert proc.stdout is not None
        acknowledged = -1
        for line in proc.stdout:
            acknowledged = int(line)
            if acknowledged >= 200:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert acknowledged >= 200, proc.stderr.read() if proc.stderr else ""

        store: Store = open_store(url)
        users = {o.id for o in store.list_objects("user")}
        assert {f"u{i}" for i in range(acknowledged + 1)} <= users
        tokens = store.list_tokens(as_id="orders")
        assert len(tokens) == len(users) >= acknowledged + 1
        assert isinstance(tokens[0], IssuedToken)
        assert len(store.changes_since(0)) == len(users)
        assert {r.event["uuid"] for r in store.query_logs(LogQuery(limit=10_000))} >= {
            f"e{i}" for i in range(acknowledged + 1)}
        assert store.current_token_seq() >= acknowledged + 1
        store.close()
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


class TestWriters:
    def test_writers_of_one_process_take_turns_and_all_commit(self, tmp_path: Path) -> None:
        """Threads of one process queue for the write lock in the process (not in SQLite's sleeping busy
        handler, which let 8 token-endpoint clients mint no faster than 1 with a 1.2 s p99): all commit."""
        store = SqliteStore(f"sqlite:///{tmp_path / 'w.db'}")
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                for i in range(25):
                    with store.transaction() as tx:
                        tx.put_object("group", f"g{n}-{i}", {}, "api")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert len(store.list_objects("group")) == 200
        store.close()

    def test_a_writer_waiting_past_the_busy_timeout_gets_a_store_error(self, tmp_path: Path) -> None:
        store = SqliteStore(f"sqlite:///{tmp_path / 'w.db'}?busy_timeout=200")
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.transaction() as tx:
                tx.put_object("group", "held", {}, "api")
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(10)
        try:
            with pytest.raises(StoreError, match="locked"), store.transaction() as tx:
                tx.put_object("group", "late", {}, "api")
        finally:
            release.set()
            holder.join(10)
        assert store.get_object("group", "held") is not None and store.get_object("group", "late") is None
        store.close()
