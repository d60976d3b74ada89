"""Typed keys for what the app and each request carry."""

from __future__ import annotations

from aiohttp import web

from simulator.models import Account
from simulator.state import SimulatorState

STATE_KEY = web.AppKey("simulator_state", SimulatorState)
# Set by the middleware once the cookie authenticated; read by every Luma API handler.
ACCOUNT_KEY = web.RequestKey("account", Account)
