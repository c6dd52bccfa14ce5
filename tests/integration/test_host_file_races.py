"""The swap race of issue 8 §1, for real: a child process exchanges a container-writable
folder with a symlink to a host folder in a loop (``renameat2(RENAME_EXCHANGE)``), while
delivery stages and removes outbox files over and over. The old check-then-open-by-path code
staged the host file (or deleted the host folder) within a few seconds; now nothing of the
host is ever read or removed."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common.hostfs import OPENAT2
from nanoclaw_common.paths import SessionPaths
from nanoclaw_delivery.files import remove_outbox, stage_files
from nanoclaw_delivery.outcome import Denied

RACE_S = 6.0
SECRET = b"HOST-SECRET-" * 100
OUT_ID = "out-1"

# The attacker: exchange `real` (a folder) and `link` (a symlink to the host) as fast as it
# can: renameat2(AT_FDCWD, real, AT_FDCWD, link, RENAME_EXCHANGE).
SWAPPER = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
real, link = sys.argv[1].encode(), sys.argv[2].encode()
while True:
    libc.renameat2(-100, real, -100, link, 2)
"""


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "openat2" and not OPENAT2.usable:
        pytest.skip("no openat2 here")
    OPENAT2.forced_off = request.param == "walk"
    try:
        yield str(request.param)
    finally:
        OPENAT2.forced_off = False


def swapping(real: Path, link: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SWAPPER, str(real), str(link)])


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    paths = SessionPaths(tmp_path / "session")
    (paths.outbox / OUT_ID).mkdir(parents=True)
    (paths.outbox / OUT_ID / "f").write_bytes(b"the agent's own file")
    return paths


@pytest.mark.parametrize("swapped", ["outbox/<id>", "outbox"])
def test_staging_never_reads_a_host_file(
    session: SessionPaths, tmp_path: Path, resolver: str, swapped: str
) -> None:
    host = tmp_path / "host"
    (host / OUT_ID).mkdir(parents=True)
    (host / "f").write_bytes(SECRET)  # what outbox/<id>/f becomes through the link
    (host / OUT_ID / "f").write_bytes(SECRET)  # what outbox/<id>/f becomes via outbox
    real = session.outbox / OUT_ID if swapped == "outbox/<id>" else session.outbox
    link = real.with_name(real.name + "-swap")
    link.symlink_to(host)
    swapper = swapping(real, link)
    staged = refused = 0
    try:
        deadline = time.monotonic() + RACE_S
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                files = stage_files(session, OUT_ID, ["f"], tmp_path / "stage" / str(n))
            except Denied:
                refused += 1
                continue
            data = files[0].path.read_bytes()
            assert b"HOST-SECRET" not in data, f"host file staged after {n} tries"
            staged += 1
    finally:
        swapper.kill()
        swapper.wait()
    # The race really ran both ways: some attempts met the link, some the real folder.
    assert refused > 0 and staged > 0, (refused, staged)


def test_removal_never_deletes_a_host_folder(
    session: SessionPaths, tmp_path: Path, resolver: str
) -> None:
    """Swapping ``agent/outbox`` itself: the old ``rmtree(path)`` followed the link in the
    middle of the path and deleted the host's folder of the same name."""
    host = tmp_path / "host"
    (host / OUT_ID).mkdir(parents=True)
    (host / OUT_ID / "precious").write_bytes(b"keep me")
    link = session.outbox.with_name("outbox-swap")
    link.symlink_to(host)
    swapper = subprocess.Popen(
        [sys.executable, "-c", REMOVAL_SWAPPER, str(session.outbox), str(link), OUT_ID]
    )
    removed = 0
    try:
        deadline = time.monotonic() + RACE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # changed under rmtree: refused, not followed
                removed += remove_outbox(session, OUT_ID)
            assert (host / OUT_ID / "precious").read_bytes() == b"keep me"
    finally:
        swapper.kill()
        swapper.wait()
    assert removed > 0  # the agent's own folder was removed, again and again
    assert (host / OUT_ID / "precious").read_bytes() == b"keep me"


# Exchange agent/outbox with the link; put outbox/<id> back whenever the host removed it.
REMOVAL_SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
outbox, link, out_id = sys.argv[1], sys.argv[2], sys.argv[3]
while True:
    if not os.path.islink(outbox):
        try:
            os.mkdir(os.path.join(outbox, out_id))
            open(os.path.join(outbox, out_id, "f"), "w").close()
        except OSError:
            pass
    libc.renameat2(-100, outbox.encode(), -100, link.encode(), 2)  # RENAME_EXCHANGE
"""
