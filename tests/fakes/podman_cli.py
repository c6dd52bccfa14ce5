"""A stand-in ``podman`` executable for code that runs the podman command line (image builds).

It is a real child process found through ``PATH``, so the code under test runs exactly as in
production (``subprocess`` is not patched). Each call appends a JSON line with its arguments,
and for ``build`` the Containerfile it was handed (the build context is a temporary folder
gone by the time the test looks). A ``fail`` file makes every call print its text and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCRIPT = """#!{python} -I
import json, pathlib, sys
home = pathlib.Path({home!r})
args = sys.argv[1:]
record = {{"args": args}}
if args[:1] == ["build"] and "--file" in args:
    record["containerfile"] = pathlib.Path(args[args.index("--file") + 1]).read_text()
with open(home / "calls.jsonl", "a") as log:
    log.write(json.dumps(record) + "\\n")
fail = home / "fail"
if fail.exists():
    print(fail.read_text(), flush=True)
    sys.exit(1)
print("STEP 1/1: fake podman", " ".join(args[:1]), flush=True)
"""


@dataclass
class FakePodmanCli:
    home: Path

    @classmethod
    def install(cls, home: Path) -> FakePodmanCli:
        (home / "bin").mkdir(parents=True, exist_ok=True)
        script = home / "bin" / "podman"
        script.write_text(_SCRIPT.format(python=sys.executable, home=str(home)))
        script.chmod(0o755)
        return cls(home)

    @property
    def bin_dir(self) -> Path:
        return self.home / "bin"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the fake first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def fail_with(self, text: str) -> None:
        (self.home / "fail").write_text(text)

    def calls(self) -> list[dict[str, Any]]:
        path = self.home / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def builds(self) -> list[tuple[str, str]]:
        """(tag, Containerfile) of every ``podman build``."""
        found = []
        for call in self.calls():
            args = call["args"]
            if args[:1] == ["build"]:
                found.append((args[args.index("--tag") + 1], call["containerfile"]))
        return found
