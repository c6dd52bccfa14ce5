"""``nanoclaw doctor``'s verdict on the confinement (sandbox/confinement.py), from a probe's
report, without Podman. tests/sandbox/test_cli.py runs the probe for real."""

from __future__ import annotations

import msgspec

from nanoclaw_common.sandbox.confinement import PROBE_SCRIPT, Check, ProbeOutput, evaluate

SAFE_BIND = "rw,nosuid,nodev,relatime"
IMAGE_CMD = ["/opt/venv/bin/python", "-I", "-B", "-u", "-m", "agent_runner"]


def confined(**changes: object) -> ProbeOutput:
    output = ProbeOutput(
        seccomp="2",
        no_new_privs="1",
        fifo={"/tmp": "EPERM", "/workspace": "EPERM", "/session/agent": "EPERM"},
        unshare_command=(1, "unshare: unshare failed: Operation not permitted"),
        user_namespace="EPERM",
        mounts={
            "/": "ro,relatime",
            "/session": "ro,nosuid,nodev,relatime",
            "/session/agent": SAFE_BIND,
            "/workspace": SAFE_BIND,
        },
    )
    return msgspec.structs.replace(output, **changes)


def failed(checks: list[Check]) -> set[str]:
    return {check.name for check in checks if not check.ok}


def test_in_force_when_every_check_passes() -> None:
    checks = evaluate(confined(), IMAGE_CMD)
    assert [check.name for check in checks] == [
        "seccomp filter",
        "no new privileges",
        "FIFOs refused",
        "user namespaces refused",
        "binds nosuid,nodev",
        "runner starts isolated (python -I)",
    ]
    assert failed(checks) == set()
    # A base image standing in for a missing agent image has no runner command to check.
    assert "runner starts isolated (python -I)" not in {c.name for c in evaluate(confined(), None)}


def test_podmans_default_profile_is_not_enough() -> None:
    """Seccomp is on (mode 2) with Podman's own profile too: what counts is what the
    container can do."""
    output = confined(
        fifo={"/tmp": "allowed", "/workspace": "allowed", "/session/agent": "allowed"},
        unshare_command=(0, ""),
        user_namespace="allowed",
    )
    assert failed(evaluate(output, IMAGE_CMD)) == {"FIFOs refused", "user namespaces refused"}
    # One way in is enough to fail.
    one_fifo = confined(fifo={"/tmp": "EPERM", "/workspace": "allowed"})
    assert failed(evaluate(one_fifo, IMAGE_CMD)) == {"FIFOs refused"}
    assert failed(evaluate(confined(fifo={}), IMAGE_CMD)) == {"FIFOs refused"}
    command_only = confined(unshare_command=(0, ""))
    assert failed(evaluate(command_only, IMAGE_CMD)) == {"user namespaces refused"}
    # Refused for another reason (a permission) is not the profile refusing it.
    assert failed(evaluate(confined(user_namespace="EACCES"), IMAGE_CMD)) == {
        "user namespaces refused"
    }


def test_no_seccomp_no_nnp_bad_mounts_or_a_runner_not_isolated() -> None:
    assert failed(evaluate(confined(seccomp="0"), IMAGE_CMD)) == {"seccomp filter"}
    assert failed(evaluate(confined(no_new_privs="0"), IMAGE_CMD)) == {"no new privileges"}
    plain = confined(mounts={"/session": "ro,relatime", "/session/agent": SAFE_BIND})
    checks = evaluate(plain, IMAGE_CMD)
    assert failed(checks) == {"binds nosuid,nodev"}
    (binds,) = [check for check in checks if check.name == "binds nosuid,nodev"]
    assert binds.found == "/session: ro,relatime; /workspace: not mounted"
    old_cmd = ["/opt/venv/bin/python", "-m", "agent_runner"]
    assert failed(evaluate(confined(), old_cmd)) == {"runner starts isolated (python -I)"}


def test_the_probe_script_is_python() -> None:
    compile(PROBE_SCRIPT, "probe", "exec")
