"""FileWatch on real files: saves in place and by rename, symlink swaps (a Kubernetes secret
volume), deletion, and files beside it that must not count."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest

from alpaca.io.watch import FileWatch, open_for_writing
from alpaca.paths import file_identity

DEBOUNCE = 0.05


class Calls:
    """Runs a FileWatch in a greenlet and counts its on_change calls."""

    def __init__(self, path: Path, recheck: float = 30.0) -> None:
        self.count = 0
        self.watch = FileWatch(path, debounce=DEBOUNCE, recheck=recheck).open()
        self.greenlet = gevent.spawn(self.watch.run, self._called)

    def _called(self) -> None:
        self.count += 1

    def after(self, change: Callable[[], object]) -> int:
        """Make ``change``, let the watch settle, return the calls it caused."""
        before = self.count
        change()
        gevent.sleep(DEBOUNCE * 6)
        return self.count - before

    def close(self) -> None:
        self.greenlet.kill()
        self.watch.close()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Calls]]:
    path = tmp_path / "secrets.txt"
    path.write_text("one\n")
    calls = Calls(path)
    try:
        yield path, calls
    finally:
        calls.close()


def _rename_over(path: Path, text: str) -> None:
    tmp = path.with_name(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_watch_save_in_place_and_by_rename(watched: tuple[Path, Calls]) -> None:
    path, calls = watched
    assert calls.after(lambda: path.write_text("two\n")) == 1
    assert calls.after(lambda: _rename_over(path, "three\n")) == 1


def test_watch_other_files_of_the_directory_call_nothing(watched: tuple[Path, Calls]) -> None:
    path, calls = watched
    assert calls.after(lambda: path.with_name("other.txt").write_text("x")) == 0
    assert calls.after(lambda: _rename_over(path.with_name("other.txt"), "y")) == 0
    assert calls.after(lambda: path.with_name("other.txt").unlink()) == 0


def test_watch_deleted_then_created_again(watched: tuple[Path, Calls]) -> None:
    path, calls = watched
    assert calls.after(path.unlink) == 1
    assert calls.after(lambda: path.write_text("back\n")) == 1


def _kubernetes_volume(directory: Path, text: str) -> Path:
    """secrets.txt -> ..data/secrets.txt, ..data -> ..v1 (how the kubelet lays out a volume)."""
    (directory / "..v1").mkdir()
    (directory / "..v1" / "secrets.txt").write_text(text)
    (directory / "..data").symlink_to("..v1")
    (directory / "secrets.txt").symlink_to("..data/secrets.txt")
    return directory / "secrets.txt"


def _kubernetes_update(directory: Path, version: int, text: str) -> None:
    """The kubelet's atomic update: a new directory, ..data renamed onto it, the old removed."""
    new = directory / f"..v{version}"
    new.mkdir()
    (new / "secrets.txt").write_text(text)
    (directory / "..data_tmp").symlink_to(new.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    shutil.rmtree(directory / f"..v{version - 1}")


def test_watch_a_kubernetes_secret_volume_update_twice(tmp_path: Path) -> None:
    path = _kubernetes_volume(tmp_path, "one\n")
    calls = Calls(path)
    try:
        assert calls.after(lambda: _kubernetes_update(tmp_path, 2, "two\n")) == 1
        assert calls.after(lambda: _kubernetes_update(tmp_path, 3, "three\n")) == 1
        assert calls.after(lambda: (tmp_path / "..v3" / "secrets.txt").write_text("3b\n")) == 1
    finally:
        calls.close()


def test_watch_a_symlink_retargeted_to_another_directory(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "secrets.txt").write_text(name)
    conf = tmp_path / "etc"
    conf.mkdir()
    link = conf / "secrets.txt"
    link.symlink_to(tmp_path / "a" / "secrets.txt")
    calls = Calls(link)
    try:
        def retarget() -> None:
            (conf / ".tmp").symlink_to(tmp_path / "b" / "secrets.txt")
            os.replace(conf / ".tmp", link)
        assert calls.after(retarget) == 1
        assert calls.after(lambda: (tmp_path / "b" / "secrets.txt").write_text("b2")) == 1
        assert calls.after(lambda: (tmp_path / "a" / "secrets.txt").write_text("a2")) == 0
    finally:
        calls.close()


def test_watch_a_symlink_loop_is_no_error_and_a_fix_is_seen(watched: tuple[Path, Calls]) -> None:
    path, calls = watched

    def loop() -> None:
        path.unlink()
        path.symlink_to(path.name)  # a mistyped ln -sf: the link names itself
    assert calls.after(loop) == 1
    assert not calls.greenlet.dead
    assert calls.after(lambda: _rename_over(path, "fixed\n")) == 1


@pytest.fixture
def in_conf(tmp_path: Path) -> Iterator[tuple[Path, Path, Calls]]:
    """(directory, file in it, its watch): a directory that the tests delete."""
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "secrets.txt"
    path.write_text("one\n")
    calls = Calls(path)
    try:
        yield conf, path, calls
    finally:
        calls.close()


def test_watch_the_directory_deleted_and_created_again(in_conf: tuple[Path, Path, Calls]) -> None:
    conf, path, calls = in_conf

    def recreate() -> None:
        shutil.rmtree(conf)
        conf.mkdir()
        path.write_text("two\n")
    assert calls.after(recreate) == 1
    assert calls.after(lambda: path.write_text("three\n")) == 1


def test_watch_the_directory_gone_for_a_while_is_watched_again_on_its_return(
        in_conf: tuple[Path, Path, Calls], caplog: pytest.LogCaptureFixture) -> None:
    # Gone for longer than the debounce: the watch found nothing to watch and, waiting on an
    # inotify fd without watches, never saw the directory nor the file again.
    conf, path, calls = in_conf
    with caplog.at_level("WARNING", logger="alpaca.io.watch"):
        assert calls.after(lambda: shutil.rmtree(conf)) == 1
    assert [r.getMessage() for r in caplog.records if "cannot watch" in r.getMessage()]

    def come_back() -> None:
        conf.mkdir()
        path.write_text("two\n")
    assert calls.after(come_back) == 1
    assert calls.after(lambda: path.write_text("three\n")) == 1


def test_watch_a_directory_reached_through_a_symlink(tmp_path: Path) -> None:
    """conf -> real: the configured directory and the resolved one share a watch descriptor,
    and following the file elsewhere must not remove it."""
    real, other = tmp_path / "real", tmp_path / "other"
    for directory in (real, other):
        directory.mkdir()
        (directory / "secrets.txt").write_text(directory.name)
    (tmp_path / "conf").symlink_to("real")
    path = tmp_path / "conf" / "secrets.txt"
    calls = Calls(path)
    try:
        def to_other() -> None:
            (real / ".tmp").symlink_to(other / "secrets.txt")
            os.replace(real / ".tmp", real / "secrets.txt")
        assert calls.after(to_other) == 1
        assert calls.after(lambda: _rename_over(real / "secrets.txt", "plain again\n")) == 1
    finally:
        calls.close()


def test_watch_a_file_being_written_in_place_is_read_once_closed(watched: tuple[Path, Calls]) -> None:
    """The secrets file is truncated and half written (still open) when the config beside it
    is saved: that event used to read the half file (a reload dropped the peers not written
    yet); only closing the file counts."""
    path, calls = watched
    writer = path.open("w")
    try:
        writer.write("one\n")
        writer.flush()
        assert calls.after(lambda: (path.parent / "config.json").write_text("{}")) == 0
        assert calls.after(lambda: (path.parent / "alpaca0.sock").touch()) == 0
        writer.write("two\n")
    finally:
        assert calls.after(writer.close) == 1


def test_watch_a_file_deleted_and_created_again_is_read_once_its_writer_closed_it(
    watched: tuple[Path, Calls], caplog: pytest.LogCaptureFixture,
) -> None:
    """An editor that deletes the file and writes a new one: the deletion's event, settled,
    found the new file half written (it exists as soon as it is created) and the reload
    dropped the peers not written yet. A file a program has open for writing waits for its
    close."""
    caplog.set_level(logging.INFO, logger="alpaca.io.watch")
    path, calls = watched
    path.unlink()
    writer = path.open("w")
    try:
        writer.write("one\n")
        writer.flush()
        gevent.sleep(DEBOUNCE * 6)
        assert calls.count == 0
        writer.write("two\n")
    finally:
        assert calls.after(writer.close) == 1
    assert caplog.text.count("a program has it open for writing") == 1


def test_watch_a_writer_holding_the_file_unchanged_is_no_news(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A program keeps the file open for writing and changes nothing: every recheck looked
    for writers and logged "changed ... open for writing", then "still open ... reading it"
    60 s later, forever, with no change and no reload. Writers are looked for only when the
    file changed."""
    caplog.set_level(logging.INFO, logger="alpaca.io.watch")
    path = tmp_path / "secrets.txt"
    path.write_text("one\n")
    calls = Calls(path, recheck=0.05)
    try:
        with path.open("a"):
            gevent.sleep(0.5)
        assert calls.count == 0 and "open for writing" not in caplog.text
    finally:
        calls.close()


def test_watch_open_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert not open_for_writing(path) and not open_for_writing(tmp_path / "none")
    with path.open("a"):
        assert open_for_writing(path)
    with path.open("r"):
        assert not open_for_writing(path)
    with path.open("r+"):
        assert open_for_writing(path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with path.open("w"):
        assert open_for_writing(link)  # the kernel names the file, not the link


def test_watch_the_directory_swapped_by_renames(tmp_path: Path) -> None:
    """mv conf conf.bak; mv conf.new conf: the watch stayed on the old directory and no
    change was seen again (or one in conf.bak was taken for the file's)."""
    conf, new = tmp_path / "conf", tmp_path / "conf.new"
    for directory in (conf, new):
        directory.mkdir()
        (directory / "secrets.txt").write_text(directory.name)
    path = conf / "secrets.txt"
    calls = Calls(path)
    try:
        def swap() -> None:
            conf.rename(tmp_path / "conf.bak")
            new.rename(conf)
        assert calls.after(swap) == 1
        assert calls.after(lambda: path.write_text("in place\n")) == 1
        assert calls.after(lambda: _rename_over(path, "by rename\n")) == 1
        assert calls.after(lambda: (tmp_path / "conf.bak" / "secrets.txt").write_text("old\n")) == 0
    finally:
        calls.close()


def test_watch_a_change_made_before_the_watch_opened_is_caught_up(tmp_path: Path) -> None:
    """The daemon reads the secrets file, then runs hooks and waits for the uplink before it
    opens the watch: a change meanwhile was never applied (the watch took the new file as
    the one read)."""
    path = tmp_path / "secrets.txt"
    path.write_text("one\n")
    read = file_identity(path)
    path.write_text("one\ntwo\n")
    watch = FileWatch(path).open(seen=read)
    try:
        assert watch.catch_up() and not watch.catch_up()
    finally:
        watch.close()
    untouched = FileWatch(path).open(seen=file_identity(path))
    try:
        assert not untouched.catch_up()
    finally:
        untouched.close()


def test_watch_a_directory_higher_up_swapped_by_renames_is_found_at_the_next_recheck(tmp_path: Path) -> None:
    """conf/alpaca/secrets.txt, then mv conf conf.old; mv conf.new conf: no watched directory
    moved (the watch is on conf/alpaca, which went with conf.old), and every later save was
    missed too. The recheck finds the new file and follows it."""
    for name in ("conf", "conf.new"):
        (tmp_path / name / "alpaca").mkdir(parents=True)
        (tmp_path / name / "alpaca" / "secrets.txt").write_text(name)
    path = tmp_path / "conf" / "alpaca" / "secrets.txt"
    calls = Calls(path, recheck=DEBOUNCE * 2)
    try:
        def swap() -> None:
            (tmp_path / "conf").rename(tmp_path / "conf.old")
            (tmp_path / "conf.new").rename(tmp_path / "conf")
        assert calls.after(swap) == 1
        assert calls.after(lambda: _rename_over(path, "by rename\n")) == 1
        assert calls.after(lambda: (tmp_path / "conf.old" / "alpaca" / "secrets.txt").write_text("x")) == 0
    finally:
        calls.close()


def test_watch_the_middle_link_of_a_chain_retargeted_is_found_at_the_next_recheck(tmp_path: Path) -> None:
    """etc/secrets.txt -> keys/current.txt -> v/1.txt; current.txt retargeted to v/2.txt by
    rename: its directory is not watched (only the first and the last are)."""
    for directory in ("etc", "keys", "v"):
        (tmp_path / directory).mkdir()
    (tmp_path / "v" / "1.txt").write_text("one\n")
    (tmp_path / "v" / "2.txt").write_text("two\n")
    (tmp_path / "keys" / "current.txt").symlink_to(tmp_path / "v" / "1.txt")
    path = tmp_path / "etc" / "secrets.txt"
    path.symlink_to(tmp_path / "keys" / "current.txt")
    calls = Calls(path, recheck=DEBOUNCE * 2)
    try:
        def retarget() -> None:
            (tmp_path / "keys" / ".next").symlink_to(tmp_path / "v" / "2.txt")
            os.replace(tmp_path / "keys" / ".next", tmp_path / "keys" / "current.txt")
        assert calls.after(retarget) == 1
        assert calls.after(lambda: (tmp_path / "v" / "2.txt").write_text("two again\n")) == 1
    finally:
        calls.close()
