"""The runner's hardening against its own tools: the non-dumpable flag (checked in real child
processes, so this test process keeps its own), the tools' environment, and the proxy token's
hand-over (the host's file in a hostile folder, the runner taking it, the socket a re-exec
passes it through). That a tool in the container really cannot find the token is
tests/sandbox/test_runner_hardening.py and test_isolation.py.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runner.hardening import (
    PRIVATE_ENV,
    TOKEN_FD_ENV,
    TOKEN_FILE,
    TokenError,
    pass_token,
    receive_token,
    take_token_file,
    tool_environment,
)
from nanoclaw_common.hostfs import UnsafePath
from nanoclaw_common.runner_config import PROXY_TOKEN_FILE, discard_proxy_token, write_proxy_token

TOKEN = "tok-" + "x" * 40

# PR_GET_DUMPABLE (3) as the child sees itself; stdlib only, like hardening.py.
GET_DUMPABLE = "import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"


def child(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.split()


def test_forbid_dumps_clears_the_dumpable_flag() -> None:
    assert child(GET_DUMPABLE) == ["1"]  # the default: same-uid processes may read /proc
    assert child(
        f"from agent_runner.hardening import forbid_dumps; print(forbid_dumps()); {GET_DUMPABLE}"
    ) == ["True", "0"]


def test_an_exec_sets_the_flag_again() -> None:
    # Why every start calls forbid_dumps(), the runner's re-exec included.
    code = (
        "import os, sys; from agent_runner.hardening import forbid_dumps; forbid_dumps(); "
        f"os.execv(sys.executable, [sys.executable, '-c', {GET_DUMPABLE!r}])"
    )
    assert child(code) == ["1"]


def test_tool_environment_leaves_the_runs_variables_out() -> None:
    assert PRIVATE_ENV == ("NANOCLAW_RUN_ID", "NANOCLAW_REEXEC", TOKEN_FD_ENV)
    environ = {
        "PATH": "/usr/bin",
        TOKEN_FD_ENV: "5",
        "NANOCLAW_RUN_ID": "run-1",
        "NANOCLAW_REEXEC": "/session/agent/heartbeat",
        "NANOCLAW_LOG_LEVEL": "INFO",
    }
    assert tool_environment(environ) == {"PATH": "/usr/bin", "NANOCLAW_LOG_LEVEL": "INFO"}


# -- the token file ---------------------------------------------------------------------------


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "session" / "agent"
    folder.mkdir(parents=True)
    return folder


def test_the_host_writes_what_the_runner_takes_once(agent_dir: Path) -> None:
    assert TOKEN_FILE == PROXY_TOKEN_FILE  # the runner keeps its own copy (stdlib only)
    owner = (os.getuid(), os.getgid())
    path = write_proxy_token(agent_dir, TOKEN, owner=owner)
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == owner
    assert os.listdir(agent_dir) == [PROXY_TOKEN_FILE]  # no temp file left behind
    assert take_token_file(agent_dir) == TOKEN
    assert os.listdir(agent_dir) == []  # unlinked as it was read
    assert take_token_file(agent_dir) is None
    # The next run's token replaces a leftover one (a runner that never started).
    write_proxy_token(agent_dir, "old")
    write_proxy_token(agent_dir, TOKEN)
    assert take_token_file(agent_dir) == TOKEN


def test_a_planted_link_is_replaced_not_written_through(agent_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (agent_dir / PROXY_TOKEN_FILE).symlink_to(victim)
    write_proxy_token(agent_dir, TOKEN)
    assert victim.read_text() == "precious"
    assert not (agent_dir / PROXY_TOKEN_FILE).is_symlink()
    assert (agent_dir / PROXY_TOKEN_FILE).read_text() == TOKEN


def test_a_planted_directory_is_removed(agent_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    planted = agent_dir / PROXY_TOKEN_FILE
    planted.mkdir()
    (planted / "escape").symlink_to(outside)
    write_proxy_token(agent_dir, TOKEN)
    assert (outside / "keep").read_text() == "kept"  # the removal followed no link
    assert planted.read_text() == TOKEN


def test_the_folder_itself_must_not_be_a_link(agent_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(agent_dir)
    with pytest.raises(UnsafePath):
        write_proxy_token(link, TOKEN)
    assert os.listdir(agent_dir) == []


def test_discard_removes_an_untaken_token(agent_dir: Path) -> None:
    write_proxy_token(agent_dir, TOKEN)
    discard_proxy_token(agent_dir)
    assert os.listdir(agent_dir) == []
    discard_proxy_token(agent_dir)  # nothing there: nothing to do


def test_the_runner_refuses_anything_but_a_regular_file(agent_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text("not a token")
    path = agent_dir / TOKEN_FILE
    path.symlink_to(secret)
    with pytest.raises(TokenError, match="cannot open"):
        take_token_file(agent_dir)
    assert not path.is_symlink() and secret.read_text() == "not a token"  # link gone only
    os.mkfifo(path)
    with pytest.raises(TokenError, match="not a regular file"):  # and no hang on the open
        take_token_file(agent_dir)
    path.unlink()
    path.write_bytes(b"x" * 5000)
    with pytest.raises(TokenError, match="too large"):
        take_token_file(agent_dir)
    assert not path.exists()


# -- across the re-exec -------------------------------------------------------------------------


def test_the_token_crosses_an_exec_in_a_socket() -> None:
    fd = pass_token(TOKEN)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from agent_runner.hardening import receive_token; print(receive_token('{fd}'))",
            ],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert done.stdout.strip() == TOKEN
        # Why a socket: /proc/<pid>/fd/<n> of a socket cannot be opened, so a same-uid
        # process cannot take the token from the new process while it is still dumpable.
        with pytest.raises(OSError):
            open(f"/proc/self/fd/{fd}", "rb")  # noqa: SIM115
    finally:
        os.close(fd)


def test_receive_token_needs_a_socket(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="no token socket"):
        receive_token("not-a-number")
    with open(tmp_path / "file", "w") as handle, pytest.raises(TokenError, match="not a socket"):
        receive_token(str(handle.fileno()))
    left, right = socket.socketpair()
    right.close()
    assert receive_token(str(left.detach())) == ""  # nothing was passed: no token
