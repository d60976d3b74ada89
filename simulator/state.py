"""Everything the simulator knows, behind methods that never await.

No method here suspends, so under asyncio each one is atomic and no lock is needed. The clock is
injected (`now`), and generation state is derived from it on read, so a test can build a state with
a fake clock and step through a generation's life without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from simulator.config import AccountSpec, OfficialAccountSpec, SimulatorConfig
from simulator.models import Account, FaultRule, Generation, OfficialAccount, Outcome, RequestRecord, Upload
from simulator.persist import MediaDir

Clock = Callable[[], float]

# Rotated sessions kept valid per account; a client only ever needs the last few, the bound keeps
# a benchmark that polls for hours from growing memory without limit.
MAX_SESSIONS_PER_ACCOUNT = 1000
AUTH_COOKIE_NAMES = frozenset({"access_token", "luma_session"})
PLAN_BY_CAPACITY = {30: "free", 150: "standard", 430: "pro", 2030: "premier"}
PUBLIC_UPLOAD_PATH = re.compile(r"/_storage/public/(?P<id>[0-9a-f-]{36})/")


class SimulatorError(Exception):
    """Base of the errors state methods raise; the app maps each to an HTTP answer."""


class AccountNotFound(SimulatorError):
    pass


class AccountConflict(SimulatorError):
    pass


class CapacitySpent(SimulatorError):
    pass


class UploadNotFound(SimulatorError):
    pass


class UploadSignatureInvalid(SimulatorError):
    pass


class UploadExpired(SimulatorError):
    pass


class OfficialRefused(SimulatorError):
    """An official create refused before anything was made: `status` and `detail` say why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def parse_cookie_header(header: str) -> list[tuple[str, str]]:
    """Split a Cookie header into (name, value) pairs, tolerating stray spaces and quotes."""
    pairs = []
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            pairs.append((name.strip(), value.strip().strip('"')))
    return pairs


def safe_filename(filename: str) -> str:
    """The last path segment with URL-unsafe characters replaced, as it appears in public_url."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", filename.rsplit("/", 1)[-1]) or "file"


class SimulatorState:
    def __init__(self, config: SimulatorConfig | None = None, now: Clock = time.time) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.now = now
        self.accounts: dict[str, Account] = {}
        self.generations: dict[str, Generation] = {}
        self.uploads: dict[str, Upload] = {}
        self.fault_rules: list[FaultRule] = []
        self.faults_injected: Counter[str] = Counter()
        self._by_credential: dict[str, Account] = {}
        self.official_accounts: dict[str, OfficialAccount] = {}
        self._by_key: dict[str, OfficialAccount] = {}
        # Official generations' callbacks: (generation id, state) already delivered or given up,
        # and every attempt, for tests to read.
        self.callbacks_done: set[tuple[str, str]] = set()
        self.callback_log: list[dict[str, Any]] = []
        self._requests: deque[RequestRecord] = deque(maxlen=self.config.request_log_limit)
        # Signing key of presigned URLs; random per run, like a real bucket's secret.
        self._signing_key = secrets.token_bytes(32)
        self.outcome_rng = random.Random()
        self.fault_rng = random.Random()
        self.reseed(self.config.seed)
        self.media = MediaDir(Path(self.config.media_dir)) if self.config.media_dir else None
        for spec in self.config.accounts:
            self.add_account(spec)
        for official in self.config.official_accounts:
            self.add_official_account(official)

    # -- configuration -------------------------------------------------------------------------

    def reseed(self, seed: int) -> None:
        # Two generators, so that the number of requests (and so fault draws) never changes which
        # generations fail.
        self.outcome_rng.seed(f"outcome-{seed}")
        self.fault_rng.seed(f"fault-{seed}")

    def update_config(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Validate `changes` as a whole, then apply them to the live config object."""
        if "accounts" in changes:
            raise ValueError("accounts cannot be patched; use the account control calls")
        merged = SimulatorConfig.model_validate({**self.config.model_dump(), **changes})
        for name in changes:
            setattr(self.config, name, getattr(merged, name))
        if "seed" in changes:
            self.reseed(self.config.seed)
        return self.config

    # -- accounts and credentials ----------------------------------------------------------------

    def add_account(self, spec: AccountSpec, plan: str | None = None) -> Account:
        if spec.name in self.accounts:
            raise AccountConflict(f"account {spec.name!r} exists")
        if spec.token in self._by_credential:
            raise AccountConflict("token is already used by another account")
        account = Account(
            name=spec.name,
            user_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"luma-simulator/{spec.name}")),
            capacity=spec.capacity,
            plan=plan or PLAN_BY_CAPACITY.get(spec.capacity, "standard"),
            token=spec.token,
            token_issued_at=self.now(),
        )
        self.accounts[spec.name] = account
        self._by_credential[spec.token] = account
        return account

    def add_official_account(self, spec: OfficialAccountSpec) -> OfficialAccount:
        if spec.name in self.accounts or spec.name in self.official_accounts:
            raise AccountConflict(f"account {spec.name!r} exists")
        if spec.key in self._by_key:
            raise AccountConflict("key is already used by another account")
        account = OfficialAccount(
            name=spec.name,
            key=spec.key,
            credits_cents=spec.credits_cents,
            max_concurrency=spec.max_concurrency,
            creates_per_minute=spec.creates_per_minute,
        )
        self.official_accounts[spec.name] = account
        self._by_key[spec.key] = account
        return account

    def official_account(self, name: str) -> OfficialAccount:
        try:
            return self.official_accounts[name]
        except KeyError:
            raise AccountNotFound(name) from None

    def authenticate_key(self, authorization: str | None) -> OfficialAccount | None:
        """The official account a `Bearer <key>` header names, if any."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._by_key.get(key.strip())

    def set_credits(self, name: str, credits_cents: int) -> OfficialAccount:
        account = self.official_account(name)
        account.credits_cents = credits_cents
        return account

    def create_official(
        self,
        account: OfficialAccount,
        *,
        prompt: str,
        price_cents: int,
        aspect_ratio: str = "16:9",
        loop: bool = False,
        model: str | None = None,
        resolution: str | None = None,
        duration: str | None = None,
        keyframes: dict[str, Any] | None = None,
        callback_url: str | None = None,
        image_failure: str | None = None,
    ) -> Generation:
        """Store an official generation and charge its price; OfficialRefused before anything if
        a limit or the balance says no. A referenced generation must be a completed one of the
        same account."""
        t = self.now()
        recent = account.creates_within(t - 60.0, t)
        if recent >= account.creates_per_minute:
            account.rejected_rate_limited += 1
            raise OfficialRefused(
                429, f"Rate limit exceeded: {account.creates_per_minute} creates per minute"
            )
        if len(account.prune_open(t)) >= account.max_concurrency:
            account.rejected_concurrency += 1
            raise OfficialRefused(429, f"Too many concurrent generations: at most {account.max_concurrency}")
        if account.credits_cents < price_cents:
            account.rejected_no_credits += 1
            raise OfficialRefused(402, "Insufficient credits")
        extend_of = None
        for frame in (keyframes or {}).values():
            if isinstance(frame, dict) and frame.get("type") == "generation":
                source = self.generations.get(str(frame.get("id")))
                if source is None or source.account != account.name or not source.video_ready_at(t):
                    raise OfficialRefused(400, "The referenced generation was not found or is not completed")
                extend_of = source.id
        images = {
            name: str(frame.get("url"))
            for name, frame in (keyframes or {}).items()
            if isinstance(frame, dict) and frame.get("type") == "image"
        }
        generation = self._new_generation(
            account.name,
            prompt,
            image_failure=image_failure,
            aspect_ratio=aspect_ratio,
            expand_prompt=False,
            loop=loop,
            image_url=images.get("frame0"),
            image_end_url=images.get("frame1"),
            kind="official",
            model=model,
            resolution=resolution,
            duration=duration,
            keyframes=keyframes,
            callback_url=callback_url,
            cost_cents=price_cents,
            extend_of=extend_of,
        )
        self.generations[generation.id] = generation
        if self.media is not None:
            self.media.keep_generation(generation)
        account.generations.append(generation)
        account.credits_cents -= price_cents
        account.spent_cents += price_cents
        account.creates += 1
        account.create_times.append(t)
        in_flight = len(account.open_generations) + 1
        account.open_generations.append(generation)
        account.max_in_flight = max(account.max_in_flight, in_flight)
        return generation

    def official_generation_for(self, account: OfficialAccount, generation_id: str) -> Generation | None:
        generation = self.generations.get(generation_id)
        return generation if generation is not None and generation.account == account.name else None

    def delete_official(self, account: OfficialAccount, generation_id: str) -> bool:
        generation = self.official_generation_for(account, generation_id)
        if generation is None:
            return False
        del self.generations[generation_id]
        account.generations.remove(generation)
        return True

    def callbacks_due(self) -> list[tuple[Generation, str]]:
        """Official generations with a callback_url whose current state has not been reported."""
        t = self.now()
        due: list[tuple[Generation, str]] = []
        for generation in self.generations.values():
            if generation.callback_url is None or generation.kind != "official":
                continue
            state = generation.state_at(t)
            if state == "pending" or (generation.id, state) in self.callbacks_done:
                continue
            if state == "completed" and not generation.video_ready_at(t):
                continue
            due.append((generation, state))
        return due

    def account(self, name: str) -> Account:
        try:
            return self.accounts[name]
        except KeyError:
            raise AccountNotFound(name) from None

    def expire_account(self, name: str) -> Account:
        """Every credential of the account answers 401 until `set_token` gives it a new one."""
        account = self.account(name)
        account.expired = True
        return account

    def set_token(self, name: str, token: str) -> Account:
        """Give the account a new token (what an operator pasting a fresh cookie does).

        The old token and all rotated sessions stop working, as they do after a re-login."""
        account = self.account(name)
        holder = self._by_credential.get(token)
        if holder is not None and holder is not account:
            raise AccountConflict("token is already used by another account")
        for credential in [account.token, *account.sessions]:
            self._by_credential.pop(credential, None)
        account.sessions.clear()
        account.token = token
        account.token_issued_at = self.now()
        account.expired = False
        self._by_credential[token] = account
        return account

    def set_capacity(
        self, name: str, capacity: int, consumed: int | None = None, plan: str | None = None
    ) -> Account:
        account = self.account(name)
        account.capacity = capacity
        if consumed is not None:
            account.consumed = consumed
        account.plan = plan or PLAN_BY_CAPACITY.get(capacity, account.plan)
        return account

    def identify(self, cookie_header: str | None) -> Account | None:
        """The account a cookie names, valid or not (for the request log)."""
        for name, value in parse_cookie_header(cookie_header or ""):
            if name in AUTH_COOKIE_NAMES and value in self._by_credential:
                return self._by_credential[value]
        return None

    def authenticate(self, cookie_header: str | None) -> Account | None:
        """The account of the first cookie that is a currently valid credential, if any."""
        for name, value in parse_cookie_header(cookie_header or ""):
            if name not in AUTH_COOKIE_NAMES:
                continue
            account = self._by_credential.get(value)
            if account is not None and self._credential_valid(account, value):
                return account
        return None

    def count_unauthenticated(self, cookie_header: str | None) -> None:
        """Count a 401 against the account the cookie names, if it names one (expired or stale)."""
        account = self.identify(cookie_header)
        if account is not None:
            account.rejected_unauthenticated += 1

    def _credential_valid(self, account: Account, credential: str) -> bool:
        if account.expired:
            return False
        issued_at = (
            account.token_issued_at if credential == account.token else account.sessions.get(credential)
        )
        if issued_at is None:
            return False
        ttl = self.config.session_ttl_seconds
        return ttl is None or self.now() - issued_at < ttl

    def rotate_session(self, account: Account) -> str:
        """Issue a new luma_session for the account; earlier ones stay valid (bounded)."""
        session = secrets.token_urlsafe(24)
        account.sessions[session] = self.now()
        self._by_credential[session] = account
        while len(account.sessions) > MAX_SESSIONS_PER_ACCOUNT:
            oldest = next(iter(account.sessions))
            del account.sessions[oldest]
            self._by_credential.pop(oldest, None)
        return session

    # -- generations -----------------------------------------------------------------------------

    def create_generation(
        self,
        account: Account,
        prompt: str,
        aspect_ratio: str = "16:9",
        expand_prompt: bool = False,
        loop: bool = False,
        image_url: str | None = None,
        image_end_url: str | None = None,
        extend_of: str | None = None,
    ) -> Generation:
        """Store a new generation and consume one unit of capacity; raises CapacitySpent at 0."""
        if account.available <= 0:
            account.rejected_create_after_spent += 1
            raise CapacitySpent(account.name)
        missing = self._missing_images(account, image_url, image_end_url)
        # Luma fetches the image itself; an upload whose bytes never arrived cannot render.
        generation = self._new_generation(
            account.name,
            prompt,
            image_failure="image not found: " + ", ".join(missing) if missing else None,
            aspect_ratio=aspect_ratio,
            expand_prompt=expand_prompt,
            loop=loop,
            image_url=image_url,
            image_end_url=image_end_url,
            extend_of=extend_of,
        )
        t = generation.created_at
        self.generations[generation.id] = generation
        if self.media is not None:
            self.media.keep_generation(generation)
        account.generations.append(generation)
        account.consumed += 1
        account.creates += 1
        # In-flight only grows at a create, so its maximum over time is the maximum over creates.
        in_flight = len(account.prune_open(t)) + 1
        account.open_generations.append(generation)
        account.max_in_flight = max(account.max_in_flight, in_flight)
        return generation

    def _new_generation(
        self, account: str, prompt: str, *, image_failure: str | None, **fields: Any
    ) -> Generation:
        """A generation made now, its fate drawn from the outcome RNG and its timeline from the config."""
        t = self.now()
        cfg = self.config
        # Drawn first and always, so the n-th generation's fate depends on the seed only.
        outcome: Outcome = "failed" if self.outcome_rng.random() < cfg.failure_rate else "completed"
        failure_reason = "failure_rate" if outcome == "failed" else None
        if image_failure:
            outcome, failure_reason = "failed", image_failure
        processing_at = t + cfg.pending_seconds
        finished_at = processing_at + cfg.processing_seconds
        return Generation(
            id=str(uuid.uuid4()),
            account=account,
            prompt=prompt,
            created_at=t,
            processing_at=processing_at,
            finished_at=finished_at,
            video_url_at=finished_at + cfg.missing_url_seconds,
            outcome=outcome,
            failure_reason=failure_reason,
            **fields,
        )

    def _missing_images(self, account: Account, *urls: str | None) -> list[str]:
        missing = []
        for url in urls:
            match = PUBLIC_UPLOAD_PATH.search(url or "")
            if url is None or match is None:
                continue  # not one of ours: an external image, assumed fetchable
            upload = self.uploaded(match["id"])
            if upload is None:
                missing.append(url)
            elif upload.account != account.name:
                account.creates_with_foreign_image += 1
        return missing

    def generation_for(self, account: Account, generation_id: str) -> Generation | None:
        generation = self.generations.get(generation_id)
        return generation if generation is not None and generation.account == account.name else None

    def list_generations(self, account: Account, offset: int, limit: int) -> list[Generation]:
        newest_first = account.generations[::-1]
        return newest_first[offset : offset + limit]

    def in_flight(self, account: Account) -> int:
        return len(account.prune_open(self.now()))

    # -- uploads ---------------------------------------------------------------------------------

    def sign_upload(self, account: Account, file_type: str, filename: str) -> Upload:
        upload_id = str(uuid.uuid4())
        upload = Upload(
            id=upload_id,
            account=account.name,
            file_type=file_type,
            filename=safe_filename(filename),
            signature=self._signature(upload_id),
            created_at=self.now(),
        )
        self.uploads[upload_id] = upload
        return upload

    def _signature(self, upload_id: str) -> str:
        return hmac.new(self._signing_key, upload_id.encode(), hashlib.sha256).hexdigest()

    def put_upload(self, upload_id: str, signature: str, data: bytes, content_type: str) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise UploadNotFound(upload_id)
        if not hmac.compare_digest(signature, upload.signature):
            raise UploadSignatureInvalid(upload_id)
        if self.now() - upload.created_at > self.config.upload_url_ttl_seconds:
            raise UploadExpired(upload_id)
        upload.data, upload.content_type, upload.uploaded_at = data, content_type, self.now()
        if self.media is not None:
            self.media.keep_upload(upload)
        return upload

    def uploaded(self, upload_id: str) -> Upload | None:
        """The upload if its bytes have arrived (in this run, or a kept one's); what the public URL serves."""
        upload = self.uploads.get(upload_id)
        if upload is None and self.media is not None:
            upload = self.media.upload(upload_id)
        return upload if upload is not None and upload.data is not None else None

    def video_ready(self, generation_id: str) -> bool:
        """Whether a generation's media URLs serve now (a kept one's too, after a restart)."""
        generation = self.generations.get(generation_id)
        if generation is not None:
            return generation.video_ready_at(self.now())
        kept = self.media.generation(generation_id) if self.media is not None else None
        return kept is not None and kept.video_ready_at(self.now())

    # -- scripted faults -------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        path_contains: str | None = None,
        body: Any = None,
        *,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> FaultRule:
        """Answer the next `count` matching Luma API requests with `status` (before any effect)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        rule = FaultRule(
            status=status,
            remaining=count,
            path_contains=path_contains,
            method=method,
            body=body,
            headers=dict(headers or {}),
            content_type=content_type,
        )
        self.fault_rules.append(rule)
        return rule

    def take_scripted_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self.fault_rules:
            if rule.matches(method, path):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self.fault_rules.remove(rule)
                return rule
        return None

    def clear_faults(self) -> None:
        self.fault_rules.clear()

    # -- request log and reports -----------------------------------------------------------------

    def log_request(self, record: RequestRecord) -> None:
        if self._requests.maxlen != self.config.request_log_limit:
            self._requests = deque(self._requests, maxlen=self.config.request_log_limit)
        self._requests.append(record)

    def requests(self, path_contains: str | None = None, method: str | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self._requests
            if (path_contains is None or path_contains in r.path)
            and (method is None or r.method.upper() == method.upper())
        ]

    def clear_requests(self) -> None:
        self._requests.clear()

    def generation_reports(self, account: str | None = None) -> list[dict[str, Any]]:
        t = self.now()
        return [g.report(t) for g in self.generations.values() if account is None or g.account == account]

    def account_stats(self) -> dict[str, dict[str, Any]]:
        t = self.now()
        stats = {name: account.stats(t) for name, account in self.accounts.items()}
        stats.update({name: account.stats(t) for name, account in self.official_accounts.items()})
        return stats

    def stats(self) -> dict[str, Any]:
        return {
            "accounts": self.account_stats(),
            "generations": len(self.generations),
            "uploads": len(self.uploads),
            "requests_logged": len(self._requests),
            "faults_injected": dict(self.faults_injected),
            "faults_pending": [rule.report() for rule in self.fault_rules],
        }
