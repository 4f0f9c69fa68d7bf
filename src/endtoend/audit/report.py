"""Step 5, report: the findings as a report that prints (a rich table), and as JSON.

`Finding` and `AuditReport` are the audit's public types; `make_report` adds the lists of
unused, dead and frozen parameters and every trainable parameter's gradient norm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

from endtoend.audit.evidence import Evidence
from endtoend.audit.ops import values


@dataclass
class Finding:
    """One problem (or one intended cut) found by the audit."""

    severity: str  # "error" | "warning" | "info"
    kind: str  # cut, no_backward, unused, dead, zero_init, no_data, frozen, ...
    op: str | None
    module: str | None
    file: str | None
    line: int | None
    message: str
    fix: str | None
    parameters: list[str] = field(default_factory=list)  # the parameters it concerns

    @property
    def where(self) -> str:
        """`file:line`, relative to the working directory when the file lies under it."""
        if self.file is None:
            return ""
        path = self.file
        with contextlib.suppress(ValueError):
            relative = os.path.relpath(path)
            path = path if relative.startswith("..") else relative
        return f"{path}:{self.line}"


@dataclass
class AuditReport:
    """What `audit` found; `ok` is True when no finding is an error."""

    findings: list[Finding]
    unused_parameters: list[str]
    dead_parameters: list[str]
    frozen_parameters: list[str]
    grad_norms: dict[str, float | None]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "unused_parameters": self.unused_parameters,
            "dead_parameters": self.dead_parameters,
            "frozen_parameters": self.frozen_parameters,
            "grad_norms": self.grad_norms,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "info")}
        learning = sum(1 for v in self.grad_norms.values() if v)
        return (
            f"audit: {'OK' if self.ok else 'NOT OK'} - {counts['error']} errors, "
            f"{counts['warning']} warnings, {counts['info']} info; "
            f"{learning}/{len(self.grad_norms)} trainable parameters get gradient, "
            f"{len(self.frozen_parameters)} frozen"
        )

    def __rich_console__(self, console, options):
        """A table on a wide console; one block per finding on a narrow one."""
        from rich.padding import Padding
        from rich.table import Table
        from rich.text import Text

        style = {"error": "bold red", "warning": "yellow", "info": "dim"}
        if self.findings and options.max_width < 110:
            for f in self.findings:
                head = Text.assemble((f.severity, style[f.severity]), f"  {f.kind} {f.op or ''}  {f.where}")
                if f.module:
                    head.append(f"  ({f.module})")
                yield head
                yield Padding(Text(f.message + (f"\nfix: {f.fix}" if f.fix else "")), (0, 0, 0, 2), expand=False)
        elif self.findings:
            # The message and the fix get the width; a module column only when there is one.
            with_module = any(f.module for f in self.findings)
            table = Table(show_lines=True, expand=True)
            table.add_column("severity", no_wrap=True)
            for column, cells in (("where", [f.where for f in self.findings]),
                                  ("finding", [f"{f.kind} {f.op or ''}".strip() for f in self.findings])):
                table.add_column(column, overflow="fold", min_width=min(max(map(len, cells)), 36))
            if with_module:
                table.add_column("module", overflow="fold", ratio=1)
            table.add_column("message", overflow="fold", ratio=3)
            table.add_column("fix", overflow="fold", ratio=2)
            for f in self.findings:
                row = [f"[{style[f.severity]}]{f.severity}[/]", f.where, f"{f.kind} {f.op or ''}".strip()]
                row += [f.module or ""] if with_module else []
                table.add_row(*row, f.message, f.fix or "")
            yield table
        yield Text(self.summary())

    def render(self, console=None) -> None:
        """Print the findings table (to `console`, or a new rich Console on stdout)."""
        from rich.console import Console

        (console or Console()).print(self)

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=160, no_color=True).print(self)
        return buffer.getvalue()


def make_report(evidence: Evidence, findings: list[Finding]) -> AuditReport:
    """The report of `findings`, with the parameter lists read from `evidence`."""
    trainable, none_ids = evidence.trainable, evidence.gradient_none
    dead_ids = evidence.dead - evidence.no_data  # zero only for this batch is not dead
    return AuditReport(
        findings=findings,
        unused_parameters=[n for n, p in trainable if id(p) in none_ids],
        dead_parameters=[n for n, p in trainable if id(p) in dead_ids],
        frozen_parameters=list(evidence.frozen),
        grad_norms={n: (None if g is None else float(values(g).float().norm()))
                    for (n, _), g in zip(trainable, evidence.grads)},
    )
