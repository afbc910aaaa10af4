"""Handlers of the usage analytics: an account, the leaderboard, the agents' figures. Thin: who is
asking (and whether they are an operator), then :mod:`cosmic_horizons_lab.server.analytics`."""

from __future__ import annotations

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from tornado import web

from cosmic_horizons_lab.server.analytics.service import UsageAnalytics
from cosmic_horizons_lab.server.handlers.base import APIBase

#: What an operator is authorised to do when the authorizer decides (``operators_by_authorizer``):
#: action ``admin`` on this resource. A custom Authorizer grants it to the operators it knows.
OPERATOR_RESOURCE = "cosmic-horizons-usage"


class UsageBase(APIBase):
    @property
    def analytics(self) -> UsageAnalytics:
        return self.app.analytics

    async def is_operator(self) -> bool:
        """Named in ``operators``, or (when the operator asks for it) authorised by the authorizer."""
        if self.owner in self.app.operators:
            return True
        if not self.app.operators_by_authorizer:
            return False
        return bool(await ensure_async(self.authorizer.is_authorized(self, self.current_user, "admin",
                                                                     OPERATOR_RESOURCE)))


class UsageAccountHandler(UsageBase):
    """``GET usage/accounts/{user}?period=&from_date=&to_date=``: one account's jobs, GPU-hours, SUs,
    cost and success rate, in total, by period and by agent (403 for another's, unless operator)."""

    @web.authenticated
    @authorized
    async def get(self, user: str) -> None:
        self.reply(await self.analytics.account(self.owner, await self.is_operator(), user, self.query()))


class UsageLeaderboardHandler(UsageBase):
    """``GET usage/leaderboard?period=&by=gpu_hours|su&limit=``: the top users (operators, or everyone
    when ``leaderboard_public``)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.analytics.leaderboard(await self.is_operator(), self.query()))


class UsageAgentsHandler(UsageBase):
    """``GET usage/agents?period=&from_date=&to_date=``: each agent's runtime distribution per period,
    queue wait and failure rate (the caller's jobs; everyone's for an operator)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.analytics.agents(self.owner, await self.is_operator(), self.query()))
