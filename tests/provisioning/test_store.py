"""The store's SQLite WAL checkpoints: the server's commits leave them to a thread."""

from __future__ import annotations

from pathlib import Path

from provisioning.server import WAL_CHECKPOINT_EVERY_S, server_store
from provisioning.store import Store
from tests.waiting import HANG_S

PAGE = 4096


def _write(store: Store, commits: int) -> None:
    """``commits`` transactions of one 3 KB audit row each (a few WAL frames per commit)."""
    for i in range(commits):
        with store.session.begin() as db:
            store.audit(db, "test.write", None, n=i, blob="x" * 3000)


def test_commits_on_the_server_store_never_checkpoint(tmp_path: Path) -> None:
    # SQLite's own behaviour first: past 1,000 WAL pages a commit copies them into the file
    plain = Store(f"sqlite:///{tmp_path / 'plain.db'}")
    _write(plain, 800)
    assert (tmp_path / "plain.db").stat().st_size > 800 * 3000, "a commit checkpointed"
    plain.close()

    path = tmp_path / "server.db"
    store = Store(f"sqlite:///{path}", checkpoint_every_s=3600)  # no round during the test
    assert store.checkpointer is not None
    assert not store.autocheckpoint
    try:
        before = path.stat().st_size
        _write(store, 800)
        wal = path.with_name("server.db-wal").stat().st_size
        assert wal > 1500 * PAGE, "the WAL went far past SQLite's threshold"
        assert path.stat().st_size < before + 100 * PAGE, "no commit copied it into the file"

        frames, copied = store.checkpointer.checkpoint()
        assert frames == copied >= 1500
        assert path.stat().st_size > 800 * 3000, "the checkpoint moved the rows into the file"
        _write(store, 1)
        frames, copied = store.checkpointer.checkpoint()
        assert frames < 20, "after a complete checkpoint the next commit started the WAL over"
    finally:
        store.close()


def test_a_wal_that_never_quiets_down_is_restarted(tmp_path: Path) -> None:
    """Past ``restart_frames`` a round restarts the WAL even if commits kept landing."""
    path = tmp_path / "busy.db"
    store = Store(f"sqlite:///{path}", checkpoint_every_s=3600)
    assert store.checkpointer is not None
    store.checkpointer.restart_frames = 500
    try:
        _write(store, 300)
        frames, copied = store.checkpointer.checkpoint()
        assert frames == copied >= 500
        _write(store, 1)
        assert store.checkpointer.checkpoint()[0] < 20
    finally:
        store.close()


def test_the_server_checkpoints_in_the_background(tmp_path: Path) -> None:
    store = server_store(f"sqlite:///{tmp_path / 'bg.db'}")
    assert store.checkpointer is not None
    assert store.checkpointer.every_s == WAL_CHECKPOINT_EVERY_S
    try:
        _write(store, 50)
        rounds = store.checkpointer.rounds
        ran = store.checkpointer.wait_for_rounds(rounds + 1, HANG_S)
        assert ran, "its thread runs rounds on its own"
    finally:
        store.close()
    assert not store.checkpointer.running, "close() stops the thread"


def test_only_a_sqlite_file_gets_a_checkpointer(db_url: str) -> None:
    store = Store(db_url, checkpoint_every_s=0.1)
    try:
        assert (store.checkpointer is not None) == db_url.startswith("sqlite")
        assert store.autocheckpoint == (store.checkpointer is None)
    finally:
        store.close()
    memory = Store("sqlite://", checkpoint_every_s=0.1)
    assert memory.checkpointer is None
    assert memory.autocheckpoint
    memory.close()
