"""``nanoclaw image build``, ``nanoclaw doctor`` and ``nanoclaw podman-service``: the CLI side
of the sandbox (nanoclaw_common/sandbox/)."""

from __future__ import annotations

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
    facts: runtime.RuntimeFacts
    heuristic: runtime.RuntimeChoice
    probe_image: str | None
    probes: list[runtime.Probe]
    chosen: str  # "defaults", a containers.conf path, or "none worked"
    ok: bool


@click.command()
@json_option
@pass_context
def doctor(ctx: CliContext) -> None:
    """Check how Podman runs containers here, choose the runtime settings, and say why."""
    ctx.layout.home.mkdir(parents=True, exist_ok=True)
    report = diagnose(ctx.layout.home, ctx.settings.image)
    if ctx.as_json:
        print_json(report)
    else:
        _print_report(report)
    if not report.ok:
        raise SystemExit(1)


def diagnose(home: Path, agent_image: str) -> DoctorReport:
    """Try throwaway containers with the candidate settings; keep the first that works."""
    layout = Layout(home)
    facts = runtime.gather_facts()
    heuristic = runtime.choose(facts)
    probe_image = _probe_image(agent_image)
    probes: list[runtime.Probe] = []
    if probe_image is None:
        conf = runtime.write_conf(layout, heuristic)
        return DoctorReport(facts, heuristic, None, probes, runtime.config_label(conf), ok=False)
    full = runtime.RuntimeChoice(
        runtime="runc" if "runc" in facts.runtimes else None,
        lower_ulimits=True,
        reasons=["both fixes of ENVIRONMENT.md (runc, lowered ulimits)"],
    )
    candidates = [heuristic, runtime.RuntimeChoice(None, False, ["Podman's defaults"]), full]
    tried: list[str] = []
    for candidate in candidates:
        key = runtime.render_conf(candidate) if candidate.needs_conf else "defaults"
        if key in tried:
            continue
        tried.append(key)
        conf = runtime.write_conf(layout, candidate)
        result = runtime.probe(probe_image, conf)
        probes.append(result)
        if result.ok:
            return DoctorReport(facts, heuristic, probe_image, probes, result.config, ok=True)
    runtime.write_conf(layout, heuristic)
    return DoctorReport(facts, heuristic, probe_image, probes, "none worked", ok=False)


def _probe_image(agent_image: str) -> str | None:
    env = runtime.podman_env(None)
    for candidate in (agent_image, images.OFFLINE_BASE, images.REGISTRY_BASE):
        if images.image_exists(candidate, env):
            return candidate
    return None


def _print_report(report: DoctorReport) -> None:
    facts: dict[str, Any] = msgspec.to_builtins(report.facts)
    rows = [{"check": key, "found": str(value)} for key, value in facts.items()]
    print_table(rows, ["check", "found"], title="This machine")
    for reason in report.heuristic.reasons:
        console.print(f"  - {reason}", highlight=False, markup=False)
    if report.probe_image is None:
        console.print(
            "no image to try a container with: run `nanoclaw image build` first",
            markup=False,
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
    console.print(f"{verdict} {report.chosen} (image {report.probe_image})", markup=False)


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
