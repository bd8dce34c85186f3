"""axe-core (Deque's accessibility rules engine) in the browser tests.

axe-core is installed from the npm registry when the tests run, pinned to ``AXE_VERSION``,
into ``var/node/`` (git-ignored) and reused by later runs; it is not copied into the
repository. So the repository carries no vendored minified third-party script to review or
keep up to date, npm checks the package against the registry's integrity hash, and moving
to another release is the one line ``AXE_VERSION``. The price is that the tests need npm
(Node.js's package manager) and the registry once per machine and version.

The rules run are those of WCAG 2.0, 2.1 and 2.2 levels A and AA plus axe's best
practices; a test fails on the ``serious`` and ``critical`` ones (issue 14).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import Page

AXE_VERSION = "4.14.1"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
FAILING_IMPACTS = ("serious", "critical")
# Nodes listed per rule in a failure message; the count says how many more there are.
NODES_SHOWN = 8


def axe_script() -> Path:
    """Return the path of ``axe.min.js``, installing axe-core from the npm registry first
    when this machine has no copy of ``AXE_VERSION`` under ``var/node/``."""
    home = Path(settings.VAR_DIR) / "node" / f"axe-core-{AXE_VERSION}"
    script = home / "node_modules" / "axe-core" / "axe.min.js"
    if script.is_file():
        return script
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            f"The accessibility tests install axe-core {AXE_VERSION} from the npm registry and need npm "
            "(Node.js's package manager) on PATH: install it (Debian: apt-get install npm), then run the tests again.",
            pytrace=False,
        )
    home.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the final place and rename: a run that stops half-way, or a second
    # test session installing at the same time, never leaves a partial copy to be reused.
    staging = Path(tempfile.mkdtemp(prefix=f".axe-core-{AXE_VERSION}-", dir=home.parent))
    try:
        done = subprocess.run(
            [npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund", "--ignore-scripts",
             "--prefix", str(staging), f"axe-core@{AXE_VERSION}"],
            capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            pytest.fail(f"npm could not install axe-core {AXE_VERSION} (exit {done.returncode}):\n"
                        f"{done.stderr[-3000:]}", pytrace=False)
        installed = json.loads((staging / "node_modules" / "axe-core" / "package.json").read_text())["version"]
        assert installed == AXE_VERSION, f"npm installed axe-core {installed}, not {AXE_VERSION}"
        try:
            os.rename(staging, home)
        except OSError:
            if not script.is_file():  # not another session's finished copy: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return script


def axe_violations(page: Page, *, context: str | dict | None = None) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now (or on ``context``: a CSS selector, or axe's
    ``{include, exclude}``) and return its violations, every impact included."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(axe_script()))
    return page.evaluate(
        """async ([context, tags]) => {
             const results = await axe.run(context || document,
               {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']});
             return results.violations;
           }""",
        [context, TAGS],
    )


def serious(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the violations whose impact fails a test."""
    return [v for v in violations if v.get("impact") in FAILING_IMPACTS]


def violations_report(violations: list[dict[str, Any]]) -> str:
    """Return the violations as text: rule, impact, help, and each node's selector, HTML
    and the first line of what to fix."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']}  [{v['helpUrl']}]")
        for node in v["nodes"][:NODES_SHOWN]:
            summary = (node.get("failureSummary") or "").splitlines()
            lines.append(f"    {' '.join(map(str, node['target']))}")
            lines.append(f"      {node['html'][:200]}")
            if len(summary) > 1:
                lines.append(f"      {summary[1].strip()[:300]}")
        if len(v["nodes"]) > NODES_SHOWN:
            lines.append(f"    ... and {len(v['nodes']) - NODES_SHOWN} more")
    return "\n".join(lines)


def assert_no_serious_violations(page: Page, label: str, *, context: str | dict | None = None) -> None:
    """Fail when axe-core finds a serious or critical violation on the page, listing each."""
    found = serious(axe_violations(page, context=context))
    if found:
        pytest.fail(f"axe-core {AXE_VERSION}: serious or critical accessibility violations on {label} "
                    f"({page.url}):\n{violations_report(found)}", pytrace=False)
