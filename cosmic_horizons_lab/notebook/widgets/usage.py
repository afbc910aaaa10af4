"""Usage: charts of an account's GPU-hours, jobs and success rate per period, and each agent's runtime
over time (p50, p90 and max), from the server's usage analytics (``GET usage/*``).

A snapshot, not a live view: the analytics answer from a Parquet export that may lag the store by
the server's ``analytics_freshness``; :meth:`Usage.refresh` asks again. The leaderboard is shown
when the server lets the caller read it (an operator, or ``leaderboard_public``).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from cosmic_horizons_lab.notebook.client import ApiError
from cosmic_horizons_lab.notebook.widgets.static import CSS, view
from cosmic_horizons_lab.notebook.widgets.summary import with_panel

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Lab


class Usage(anywidget.AnyWidget):
    _esm = view("usage")
    _css = CSS

    period = traitlets.Unicode("week", help="The bucket of the charts: day, week or month.").tag(sync=True)
    account = traitlets.Dict(help="GET usage/accounts/{user}: totals, by_period, by_agent.").tag(sync=True)
    agents = traitlets.Dict(help="GET usage/agents: each agent's runtime and queue wait per period.").tag(sync=True)
    leaderboard = traitlets.Dict(help="GET usage/leaderboard, or {} when the caller may not read it.").tag(sync=True)
    error = traitlets.Unicode("", help="Why the figures could not be read (empty when they were).").tag(sync=True)

    def __init__(self, lab: Lab, *, period: str = "week", user: str | None = None,
                 from_date: str | None = None, to_date: str | None = None) -> None:
        self._lab = lab
        self._user = user
        self._dates = {k: v for k, v in {"from_date": from_date, "to_date": to_date}.items() if v}
        super().__init__(period=period)
        self.refresh()
        self.on_msg(self._on_msg)

    def __repr__(self) -> str:
        totals = (self.account or {}).get("totals") or {}
        return (f"<Usage of {self.account.get('user', '?')}: {totals.get('jobs', 0)} jobs, "
                f"{totals.get('gpu_hours', 0):.2f} GPU-hours, {totals.get('su', 0):.2f} SU>")

    def summary(self) -> list[str]:
        """The charts in words, for a reopened notebook whose kernel is gone (``panels/restore.ts``)."""
        if self.error:
            return [f"Usage: {self.error}"]
        totals = (self.account or {}).get("totals") or {}
        rate = totals.get("success_rate")
        lines = [f"Usage of {self.account.get('user', '?')} by {self.period}: {totals.get('jobs', 0)} jobs, "
                 f"{totals.get('gpu_hours', 0):.2f} GPU-hours, {totals.get('su', 0):.2f} SU"
                 + (f", {100 * rate:.0f} % succeeded" if rate is not None else "")]
        for row in (self.account or {}).get("by_period", [])[-6:]:
            lines.append(f"{row.get('period')}: {row.get('jobs', 0)} jobs, {row.get('gpu_hours', 0):.2f} GPU-hours")
        return lines

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_panel(self, super()._repr_mimebundle_(**kwargs), self.summary())

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("action") == "period" and content.get("period"):
            self.period = str(content["period"])
            self.refresh()

    def refresh(self) -> None:
        """Ask the server again (it exports what changed first, when its export is stale)."""
        params = {"period": self.period, **self._dates}
        get = self._lab.client.request
        try:
            agents = get("GET", "usage/agents", params=params)
            user = self._user or agents["user"]
            account = get("GET", f"usage/accounts/{urllib.parse.quote(user, safe='')}", params=params)
        except ApiError as exc:
            self.error = str(exc)
            return
        try:
            board = get("GET", "usage/leaderboard", params={"period": "month" if self.period != "day" else "week",
                                                            **self._dates})
        except ApiError:
            board = {}  # not an operator, and the leaderboard is not public
        self.agents, self.account, self.leaderboard, self.error = agents, account, board, ""
