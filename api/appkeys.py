"""The typed keys under which create_app keeps what handlers use (opened in api/app.py).

They live apart from app.py so handlers can import them without importing the app that imports
the handlers. The keyring's key sits beside the keyring, in api/auth.py.
"""

from __future__ import annotations

from aiohttp import web
from arq.connections import ArqRedis
from redis.asyncio import Redis

from api.events import EventHub
from shared.accounts import AccountRegistry
from shared.events import EventLog
from shared.files import FileStore
from shared.settings import Settings
from shared.store import GenerationStore
from shared.webhooks import WebhookStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)  # decoded strings: records, indexes, accounts
ARQ = web.AppKey("arq", ArqRedis)  # bytes: arq's queue and uploaded images
STORE = web.AppKey("store", GenerationStore)
REGISTRY = web.AppKey("registry", AccountRegistry)
EVENTS = web.AppKey("events", EventLog)
FILES = web.AppKey("files", FileStore)  # images the gateway keeps itself (shared/files.py)
# The live stream's one reader of the event log in this process (api/events.py).
EVENT_HUB = web.AppKey("event_hub", EventHub)
WEBHOOKS = web.AppKey("webhooks", WebhookStore)
