"""``nanoclaw image build``, ``nanoclaw doctor`` and ``nanoclaw podman-service``: the CLI side
of the sandbox (nanoclaw_common/sandbox/)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import click
import msgspec

from nanoclaw_common.cli.context import CliContext, json_option, pass_context
from nanoclaw_common.cli.output import console, print_json, print_table
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import images, runtime, service
from nanoclaw_common.settings import Settings


@click.group()
def image() -> None:
    """The agent container image."""


@image.command("build")
@click.option("--offline", is_flag=True, help="Skip the registry; use the debootstrap base.")
@click.option("--base", "base_image", help="Build FROM this image instead of choosing one.")
@click.option("--tag", "tag", help="Image name to build (default: the `image` setting).")
@pass_context
def image_build(ctx: CliContext, offline: bool, base_image: str | None, tag: str | None) -> None:
    """Build the agent image, fully offline when no image registry is reachable."""
    target = tag or ctx.settings.image
    ctx.layout.home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    conf = runtime.ensure_containers_conf(ctx.layout)
    if conf is not None:
        _step(f"podman settings for this machine: {conf}")
    try:
        base = images.build_agent_image(
            target, runtime.podman_env(conf), _progress, base=base_image, offline=offline
        )
    except NanoclawError as exc:
        raise click.ClickException(str(exc)) from None
    _step(f"built {target} from {base} in {time.monotonic() - started:.0f}s")


def _step(text: str) -> None:
    click.echo(click.style(f"==> {text}", bold=True))


def _progress(line: str) -> None:
    # Plain echo: podman's lines contain brackets that rich would read as markup.
    click.echo(f"    {line}")


# -- doctor --------------------------------------------------------------------------------


class DoctorReport(msgspec.Struct):
    podman: str  # `podman --version`, or why it could not run
    api_socket: str
    api_answering: bool
    agent_image: str
    agent_image_present: bool
    facts: runtime.RuntimeFacts
    heuristic: runtime.RuntimeChoice
    probe_image: str | None
    probes: list[runtime.Probe]
    chosen: str  # "defaults", our containers.conf's path, or "none worked"
    ok: bool


@click.command()
@json_option
@pass_context
def doctor(ctx: CliContext) -> None:
    """Check how Podman runs containers here, choose the runtime settings, and say why."""
    ctx.layout.home.mkdir(parents=True, exist_ok=True)
    report = diagnose(ctx.layout, ctx.settings)
    if ctx.as_json:
        print_json(report)
    else:
        _print_report(report)
    if not report.ok:
        raise SystemExit(1)


def diagnose(layout: Layout, settings: Settings) -> DoctorReport:
    """Try a throwaway container with each candidate setting (our heuristic's choice, Podman's
    defaults, both fixes), report every result, and keep the first that works in that order
    of preference as our containers.conf."""
    facts = runtime.gather_facts()
    heuristic = runtime.choose(facts)
    env = runtime.podman_env(None)
    present = images.image_exists(settings.image, env)
    probe_image = settings.image if present else _fallback_probe_image(env)
    socket_url = settings.podman_socket_url
    report = DoctorReport(
        podman=_podman_version(),
        api_socket=socket_url,
        api_answering=socket_url.startswith("unix://")
        and service.socket_answers(Path(socket_url.removeprefix("unix://"))),
        agent_image=settings.image,
        agent_image_present=present,
        facts=facts,
        heuristic=heuristic,
        probe_image=probe_image,
        probes=[],
        chosen="none worked",
        ok=False,
    )
    if probe_image is None:
        report.chosen = runtime.config_label(runtime.write_conf(layout, heuristic))
        return report
    both = runtime.RuntimeChoice(
        runtime="runc" if "runc" in facts.runtimes else None,
        lower_ulimits=True,
        reasons=["both fixes of ENVIRONMENT.md (runc, lowered ulimits)"],
    )
    defaults = runtime.RuntimeChoice(None, False, ["Podman's defaults"])
    working: list[runtime.RuntimeChoice] = []
    seen: set[tuple[str | None, bool]] = set()
    for candidate in (heuristic, defaults, both):
        if (candidate.runtime, candidate.lower_ulimits) in seen:
            continue
        seen.add((candidate.runtime, candidate.lower_ulimits))
        result = _probe_with(layout, probe_image, candidate)
        report.probes.append(result)
        if result.ok:
            working.append(candidate)
    if working:
        report.chosen = runtime.config_label(runtime.write_conf(layout, working[0]))
        report.ok = True
    else:
        runtime.write_conf(layout, heuristic)
    return report


def _probe_with(layout: Layout, image: str, choice: runtime.RuntimeChoice) -> runtime.Probe:
    """Probe with a scratch copy of the candidate's conf (the real one is written once the
    choice is made, so a running service never sees a candidate)."""
    if not choice.needs_conf:
        return runtime.probe(image, None)
    scratch = layout.home / "podman" / "probe.conf"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_text(runtime.render_conf(choice))
    try:
        result = runtime.probe(image, scratch)
    finally:
        scratch.unlink(missing_ok=True)
    return msgspec.structs.replace(result, config=_describe(choice))


def _describe(choice: runtime.RuntimeChoice) -> str:
    parts = [f"runtime {choice.runtime}"] if choice.runtime else []
    if choice.lower_ulimits:
        parts.append("ulimits 4096")
    return ", ".join(parts) or "defaults"


def _podman_version() -> str:
    try:
        done = subprocess.run(
            ["podman", "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run podman: {exc}"
    return done.stdout.strip() or done.stderr.strip()


def _fallback_probe_image(env: dict[str, str]) -> str | None:
    for candidate in (images.OFFLINE_BASE, images.REGISTRY_BASE):
        if images.image_exists(candidate, env):
            return candidate
    return None


def _print_report(report: DoctorReport) -> None:
    facts: dict[str, Any] = msgspec.to_builtins(report.facts)
    rows = [
        {"check": "podman", "found": report.podman},
        {
            "check": "api socket",
            "found": f"{report.api_socket} ({'answering' if report.api_answering else 'down'})",
        },
        {
            "check": "agent image",
            "found": report.agent_image
            + (" (present)" if report.agent_image_present else " (missing)"),
        },
        *({"check": key, "found": str(value)} for key, value in facts.items()),
    ]
    print_table(rows, ["check", "found"], title="This machine")
    for reason in report.heuristic.reasons:
        console.print(f"  - {reason}", highlight=False, markup=False)
    if report.probe_image is None:
        console.print(
            "no image to try a container with: run `nanoclaw image build` first", markup=False
        )
        return
    probe_rows = [
        {
            "config": p.config,
            "result": "ok" if p.ok else "failed",
            "seconds": f"{p.seconds:.2f}",
            "error": p.error,
        }
        for p in report.probes
    ]
    print_table(probe_rows, ["config", "result", "seconds", "error"], title="Throwaway containers")
    verdict = "chose" if report.ok else "FAILED:"
    console.print(f"{verdict} {report.chosen} (tried with {report.probe_image})", markup=False)


# -- the Podman API service (supervisord's `podman-api` program) ----------------------------


@click.command("podman-service")
@pass_context
def podman_service(ctx: CliContext) -> None:
    """Run `podman system service` on the data folder's socket (replaces this process)."""
    if ctx.settings.podman_url:
        raise click.ClickException(
            f"podman_url is set ({ctx.settings.podman_url}): that service is not ours to run"
        )
    ctx.layout.ensure()
    conf = runtime.ensure_containers_conf(ctx.layout)
    service.exec_service(ctx.layout.podman_socket, runtime.podman_env(conf))
