"""``nanoclaw image build``, ``nanoclaw doctor`` and ``nanoclaw podman-service``: the CLI side
of the sandbox (nanoclaw_common/sandbox/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import msgspec

from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.disk import MechanismReport, mechanisms
from nanoclaw_cli.output import console, print_json, print_table
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import confinement, images, runtime, service
from nanoclaw_common.sandbox.group_image import build_recorded_group_image
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore


@click.group()
def image() -> None:
    """The agent container image."""


@image.command("build")
@click.option("--offline", is_flag=True, help="Skip the registry; use the debootstrap base.")
@click.option("--base", "base_image", help="Build FROM this image instead of choosing one.")
@click.option("--tag", "tag", help="Image name to build (default: the `image` setting).")
@click.option(
    "--groups", is_flag=True, help="Also rebuild group images not built on the new agent image."
)
@pass_context
def image_build(
    ctx: CliContext, offline: bool, base_image: str | None, tag: str | None, groups: bool
) -> None:
    """Build the agent image, fully offline when no image registry is reachable."""
    target = tag or ctx.settings.image
    ctx.layout.home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    conf = runtime.ensure_containers_conf(ctx.layout)
    if conf is not None:
        _step(f"podman settings for this machine: {conf}")
    env = runtime.podman_env(conf)
    try:
        base = images.build_agent_image(target, env, _progress, base=base_image, offline=offline)
    except NanoclawError as exc:
        raise click.ClickException(str(exc)) from None
    _step(f"built {target} from {base} in {time.monotonic() - started:.0f}s")
    # Group images are built FROM the `image` setting; another tag leaves them as they are.
    if target == ctx.settings.image and ctx.layout.central_db.exists():
        outdated = outdated_group_images(ctx.store(), target, env)
        if groups:
            _rebuild_groups(ctx, outdated, target)
        else:
            _note_outdated(outdated, target)


def _rebuild_groups(ctx: CliContext, outdated: list[GroupImage], agent_image: str) -> None:
    """Rebuild each group image FROM the new agent image with the packages it already has
    (a group image holds everything ever approved for the group)."""
    central = ctx.store()
    for stale in outdated:
        config = central.get_container_config(stale.agent_group_id)
        if config is not None and config.packages_apt == "[]" and config.packages_pip == "[]":
            # Nothing was ever installed for it: it needs no image of its own.
            central.update_container_config(stale.agent_group_id, image_tag=None)
            _step(f"{stale.name} ({stale.agent_group_id}) uses the agent image again")
            continue
        _step(f"rebuilding the image of {stale.name} ({stale.agent_group_id})")
        try:
            tag = build_recorded_group_image(
                ctx.store(),
                ctx.layout,
                stale.agent_group_id,
                agent_image=agent_image,
                apt=[],
                pip=[],
                out=_progress,
            )
        except NanoclawError as exc:
            raise click.ClickException(f"{stale.name}: {exc}") from None
        _step(f"built {tag}")


class GroupImage(msgspec.Struct, frozen=True):
    """A group's own image (``container_configs.image_tag``) that is not built on the
    current agent image."""

    agent_group_id: str
    name: str
    tag: str
    missing: bool  # no such image: the group's sessions cannot start at all


def outdated_group_images(
    central: CentralStore, agent_image: str, env: dict[str, str]
) -> list[GroupImage]:
    """Group images whose layers do not start with ``agent_image``'s: they were built FROM
    an earlier agent image and run its agent runner, which may not understand what this
    host writes. Missing images are listed too."""
    base = images.image_layers(agent_image, env)
    if base is None:
        return []
    found: list[GroupImage] = []
    for group in central.list_agent_groups():
        config = central.get_container_config(group.id)
        if config is None or not config.image_tag:
            continue
        layers = images.image_layers(config.image_tag, env)
        if layers is None or not built_on(base, layers):
            found.append(GroupImage(group.id, group.name, config.image_tag, layers is None))
    return found


def built_on(base_layers: list[str], layers: list[str]) -> bool:
    """An image built FROM the base starts with the base's layers (a rebuild of the base
    that changed anything has different ones)."""
    return len(layers) >= len(base_layers) and layers[: len(base_layers)] == base_layers


def _note_outdated(outdated: list[GroupImage], agent_image: str) -> None:
    if not outdated:
        return
    _step(
        f"note: {len(outdated)} group image(s) are not built on this {agent_image} and run an"
        " older agent runner; rebuild them with `nanoclaw image build --groups`:"
    )
    for image_ in outdated:
        state = "missing" if image_.missing else "built from an older agent image"
        click.echo(f"    {image_.name} ({image_.agent_group_id}): {image_.tag} ({state})")


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
    # Seccomp profile, no-new-privileges, mount options, isolated runner: tried in a
    # container started as wake starts one (None: no container could run).
    confinement: confinement.Confinement | None
    ok: bool  # a runtime setting works and the confinement is in force
    disk_quotas: list[MechanismReport] = []  # kernel project quotas or the sweeper's walk


@click.command()
@json_option
@pass_context
def doctor(ctx: CliContext) -> None:
    """Check how Podman runs containers here, choose the runtime settings, say why, and
    check in a throwaway container that the confinement (seccomp profile, mount options,
    isolated runner) is in force. Exits 1 when anything failed."""
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
        podman=runtime.podman_version(),
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
        confinement=None,
        ok=False,
        disk_quotas=mechanisms(settings, DiskQuotas(settings, layout)),
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
    if not working:
        runtime.write_conf(layout, heuristic)
        return report
    report.chosen = runtime.config_label(runtime.write_conf(layout, working[0]))
    report.confinement = confinement.probe(
        layout=layout, settings=settings, image=probe_image, agent_image=present
    )
    report.ok = report.confinement.in_force
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
    print_table(report.disk_quotas, ["scope", "mechanism", "reason"], title="Disk quotas")
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
    verdict = "chose" if report.probes and report.chosen != "none worked" else "FAILED:"
    console.print(f"{verdict} {report.chosen} (tried with {report.probe_image})", markup=False)
    _print_confinement(report.confinement)


def _print_confinement(found: confinement.Confinement | None) -> None:
    if found is None:
        return
    rows = [
        {"check": check.name, "result": "ok" if check.ok else "FAILED", "found": check.found}
        for check in found.checks
    ]
    print_table(
        rows, ["check", "result", "found"], title="Confinement (a container as wake starts it)"
    )
    if found.error:
        console.print(f"FAILED: {found.error}", markup=False)
    state = "in force" if found.in_force else "NOT in force"
    console.print(f"confinement {state} (seccomp profile {found.profile})", markup=False)


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
