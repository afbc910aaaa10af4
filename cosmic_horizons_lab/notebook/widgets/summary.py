"""A live panel's static text form, saved with the notebook beside the widget view.

A widget's output holds only its model id: once the kernel that made it is gone,
JupyterLab's widget renderer can show nothing but "Error displaying widget: model
not found". So each panel's display data also carries its last state in words,
under a mimetype of ours (``PANEL_MIME``: the model id, the panel's kind and its
summary lines) and as ``text/html`` for other readers (nbconvert, GitHub). The
labextension's renderer (``js/src/panels/restore.ts``) shows the live panel when
the notebook's widget manager still has the model, and these lines with a hint
to re-run the cell when it has not. While the panel is live, the lines follow it
(the ``panel_summary`` traitlet), and the renderer writes them into the output,
so a saved notebook holds the panel's last state, not its first.
"""

from __future__ import annotations

import html
from typing import Any

#: Our marker in a widget's display data; JupyterLab renders it before the widget view.
PANEL_MIME = "application/vnd.cosmic-horizons.panel+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
HINT = "Saved view: re-run the cell for the live panel."


def percent(progress: Any) -> str:
    """A progress fraction as people read it: "42 %" (missing is 0 %)."""
    try:
        value = max(0.0, min(1.0, float(progress or 0.0)))
    except (TypeError, ValueError):
        value = 0.0
    return f"{100 * value:.0f} %"


def job_line(record: dict[str, Any], label: str | None = None) -> str:
    """One job in words: "Job 3f2a1b2c AlphaCal · VLA.X — COMPLETED, 100 %"."""
    name = " · ".join(str(v) for v in (record.get("agent"), record.get("dataset_id")) if v)
    status = str(record.get("status") or "QUEUED")
    text = f"Job {str(record.get('id', ''))[:8]} {name}".rstrip()
    if label:
        text += f" ({label})"
    return f"{text} — {status}, {percent(1.0 if status == 'COMPLETED' else record.get('progress'))}"


def panel_html(kind: str, lines: list[str]) -> str:
    """The summary as (escaped) HTML: the title line, then the rest, then the hint."""
    head, *rest = lines or [kind]
    body = "".join(f"<div>{html.escape(line)}</div>" for line in rest)
    return (f'<div class="ch-panel-saved" data-kind="{html.escape(kind)}"><div><b>{html.escape(head)}</b></div>'
            f'{body}<div><i>{html.escape(HINT)}</i></div></div>')


def panel_bundle(data: dict[str, Any], *, model_id: str, kind: str, lines: list[str]) -> dict[str, Any]:
    """The widget's display data with its static form added (the widget view stays as it was)."""
    if WIDGET_MIME not in data:
        return data
    return {
        **data,
        PANEL_MIME: {"model_id": model_id, "kind": kind, "lines": list(lines), "hint": HINT},
        "text/html": panel_html(kind, lines),
    }


def with_panel(widget: Any, bundle: Any, lines: list[str]) -> Any:
    """A widget's ``_repr_mimebundle_`` answer (data, or (data, metadata)) with its static form."""
    if bundle is None:
        return None
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
    return panel_bundle(data, model_id=widget.model_id, kind=type(widget).__name__, lines=lines), metadata
