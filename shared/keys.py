"""Every Redis key, queue name and lock name the project uses, on one screen.

Records and indexes (written only by shared/store.py's transition):
    gen:{id}                 string  JSON GenerationRecord; expires after the retention period
    gen:{id}:events          list    the generation's own history: one JSON event per transition
    owner:{owner}:gens       zset    gen id -> created_at ms; one key holder's list, newest last
    owner:{owner}:state:{s}  zset    the same, for the holder's generations in public state s
    owner:{owner}:batch:{b}  zset    the same, for one batch of the holder's
    owner:{owner}:batch:{b}:state:{s}   zset  a batch's generations in public state s
    upstream:{upstream_id}   string  gen id that owns this upstream generation (adoption guard)
    upload:{id}              string  the uploaded bytes, until a worker has put them upstream
    upload-account:{hash}    string  account that holds an uploaded image (by public_url hash)

Key holders (limits checked inside the create's Lua step, shared/store.py):
    holder:{owner}:limits    hash    an operator's overrides: max_queued, creates_per_minute
    holder:{owner}:creates   zset    gen id -> created ms over the last minute: the rate window
    idem:{owner}:{digest}    string  JSON {hash, ids, batch_id}: what an Idempotency-Key created

The event log (shared/events.py has the schema of an event):
    events                   stream  every transition of every generation, and account health
    events:{owner}           stream  one key holder's generation events, same entry ids

Webhooks (shared/webhooks.py writes them; worker/webhooks.py reads the log and delivers):
    group `webhooks` on `events`     a consumer group with one consumer, also named `webhooks`:
                                     the cursor, and entries read but not yet acknowledged
    lock:webhook-reader      string  lock: the one worker reading the log for webhooks
    webhook-secret:{owner}   string  the key holder's signing secret, `whsec_...`
    webhook:{webhook id}     hash    one event's delivery: url, body, state, attempts, lease
    webhook-gen:{id}         list    webhook ids of a generation's events, in the log's order
    webhook-gen:{id}:queue   list    those not yet delivered nor given up; only the head is sent
    webhook-gen:{id}:attempts  list  one JSON object per attempt, oldest first
    webhook-due              zset    gen id -> ms when its queue's head is due (or its lease ends)

Uploads in flight (api/uploads.py: their bytes in Redis are capped):
    uploads:expiry           zset    upload id -> ms when its bytes' reservation lapses (if the api died)
    uploads:sizes            hash    upload id -> bytes it holds in Redis
    uploads:bytes            string  the sum of uploads:sizes

Scheduling (see worker/scheduler.py for the Lua that keeps these consistent):
    wait:owners              zset    owner -> turn; the owner with the lowest turn is served next
    wait:{owner}             zset    gen id -> sequence; one owner's waiting generations, FIFO
    wait:pin                 hash    gen id -> account that should run it (image uploaded there)
    wait:all                 zset    every waiting gen id -> sequence; its size is the queue depth
    wait:seq / wait:turn     string  counters behind the two zsets above
    wake                     list    tokens that wake a dispatcher: new work or a freed slot
    accounts                 set     account names
    account:{name}           hash    config, cookie, state, usage cache
    account:{name}:leases    zset    gen id -> lease expiry ms; one entry per slot in use
    account:{name}:submitting set    gen ids claimed on this account but not yet created upstream
    account:{name}:running   zset    gen id -> upstream created ms; generations to poll
    account:{name}:cost      hash    gen id -> what its claim reserved (1 generation, or cents)
    account:{name}:creates   zset    gen id -> ms its create was claimed or sent: the rate window
    account:{name}:poll      string  lock: its lifetime is the wait until the account's next poll
    account:{name}:usage-lock / :heartbeat-lock   locks: one worker reads usage / keeps alive per period
    lock:sweep / lock:deadlines   string  locks: one worker sweeps, one enforces deadlines, per period
    workers                  set     ids of workers that have announced themselves
    worker:{id}              string  a worker's liveness: expires 3 heartbeats after its last
    worker:{id}:jobs         set     arq job ids that worker is running (taken over if it dies)
    start-deadlines          zset    gen id -> ms by which it must have been submitted upstream
    pool:unusable-since      string  ms since when no account could take work (NO_ACCOUNT_DEADLINE)
    pool:unservable-since    hash    gen id -> ms since when no active account could run that waiting
                                     generation as it asks (its provider, its account, its price)
    upstream-callback:{hash} string  gen id an official create's callback token names (by token hash)
    refresh:{id} (arq job)           an immediate read of one generation, after a Luma callback
    stats:gen-seconds        string  measured recent generation time (EWMA), for estimates
    fence                    string  fencing token counter for create intents
    dispatch:seq             string  counts claims: the global order in which generations start
    replication:probe        string  written before a WAIT, so the WAIT covers the writes before it

Metrics (shared/tally.py folds the event log into these at scrape time):
    metrics:tally            hash    counters: generations accepted, finished by state and reason,
                                     create-to-terminal seconds by histogram bucket
    metrics:cursor           string  the id of the last event folded into metrics:tally

arq's own keys live under its `arq:` prefix; our jobs go to the queue ARQ_QUEUE below.
"""

from __future__ import annotations

import hashlib

PREFIX = "lq:"

# arq's own queue; jobs are named submit:{gen id} and upload:{upload id} so re-enqueues dedupe.
ARQ_QUEUE = "lq:arq:queue"

WAIT_OWNERS = PREFIX + "wait:owners"
WAIT_PIN = PREFIX + "wait:pin"
WAIT_ALL = PREFIX + "wait:all"
WAIT_SEQ = PREFIX + "wait:seq"
WAIT_TURN = PREFIX + "wait:turn"
WAKE = PREFIX + "wake"
ACCOUNTS = PREFIX + "accounts"
GEN_SECONDS = PREFIX + "stats:gen-seconds"
FENCE = PREFIX + "fence"
DISPATCH_SEQ = PREFIX + "dispatch:seq"
REPLICATION_PROBE = PREFIX + "replication:probe"
SWEEP_LOCK = PREFIX + "lock:sweep"
DEADLINES_LOCK = PREFIX + "lock:deadlines"
EVENTS = PREFIX + "events"
WORKERS = PREFIX + "workers"
START_DEADLINES = PREFIX + "start-deadlines"
POOL_UNUSABLE_SINCE = PREFIX + "pool:unusable-since"
WEBHOOK_GROUP = "webhooks"  # the consumer group on EVENTS, and its one consumer's name
WEBHOOK_READER_LOCK = PREFIX + "lock:webhook-reader"
WEBHOOK_DUE = PREFIX + "webhook-due"
UPLOADS_EXPIRY = PREFIX + "uploads:expiry"
UPLOADS_SIZES = PREFIX + "uploads:sizes"
UPLOADS_BYTES = PREFIX + "uploads:bytes"
UNSERVABLE_SINCE = PREFIX + "pool:unservable-since"
METRICS_TALLY = PREFIX + "metrics:tally"
METRICS_CURSOR = PREFIX + "metrics:cursor"


def generation(gen_id: str) -> str:
    return f"{PREFIX}gen:{gen_id}"


def generation_events(gen_id: str) -> str:
    return f"{PREFIX}gen:{gen_id}:events"


def owner_index(owner: str) -> str:
    return f"{PREFIX}owner:{owner}:gens"


def owner_state_index(owner: str, state: str) -> str:
    return f"{PREFIX}owner:{owner}:state:{state}"


def batch_index(owner: str, batch_id: str) -> str:
    return f"{PREFIX}owner:{owner}:batch:{batch_id}"


def batch_state_index(owner: str, batch_id: str, state: str) -> str:
    return f"{PREFIX}owner:{owner}:batch:{batch_id}:state:{state}"


def holder_limits(owner: str) -> str:
    return f"{PREFIX}holder:{owner}:limits"


def holder_creates(owner: str) -> str:
    return f"{PREFIX}holder:{owner}:creates"


def idempotency(owner: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{PREFIX}idem:{owner}:{digest}"


def owner_events(owner: str) -> str:
    return f"{PREFIX}events:{owner}"


def webhook_secret(owner: str) -> str:
    return f"{PREFIX}webhook-secret:{owner}"


def webhook_delivery(webhook_id: str) -> str:
    return f"{PREFIX}webhook:{webhook_id}"


def webhook_deliveries(gen_id: str) -> str:
    return f"{PREFIX}webhook-gen:{gen_id}"


def webhook_queue(gen_id: str) -> str:
    return f"{PREFIX}webhook-gen:{gen_id}:queue"


def webhook_attempts(gen_id: str) -> str:
    return f"{PREFIX}webhook-gen:{gen_id}:attempts"


def upstream(upstream_id: str) -> str:
    return f"{PREFIX}upstream:{upstream_id}"


def upload_bytes(upload_id: str) -> str:
    return f"{PREFIX}upload:{upload_id}"


def upload_account(public_url: str) -> str:
    digest = hashlib.sha256(public_url.encode()).hexdigest()[:32]
    return f"{PREFIX}upload-account:{digest}"


def wait_queue(owner: str) -> str:
    return f"{PREFIX}wait:{owner}"


def account(name: str) -> str:
    return f"{PREFIX}account:{name}"


def leases(name: str) -> str:
    return f"{PREFIX}account:{name}:leases"


def submitting(name: str) -> str:
    return f"{PREFIX}account:{name}:submitting"


def running(name: str) -> str:
    return f"{PREFIX}account:{name}:running"


def reserved_cost(name: str) -> str:
    return f"{PREFIX}account:{name}:cost"


def create_window(name: str) -> str:
    return f"{PREFIX}account:{name}:creates"


def upstream_callback(token: str) -> str:
    # By hash: a dump of Redis does not hand out tokens that trigger refreshes.
    digest = hashlib.sha256(token.encode()).hexdigest()[:32]
    return f"{PREFIX}upstream-callback:{digest}"


def poll_lock(name: str) -> str:
    return f"{PREFIX}account:{name}:poll"


def usage_lock(name: str) -> str:
    return f"{PREFIX}account:{name}:usage-lock"


def heartbeat_lock(name: str) -> str:
    return f"{PREFIX}account:{name}:heartbeat-lock"


def worker_alive(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def worker_jobs(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}:jobs"


def submit_job_id(gen_id: str) -> str:
    return f"submit:{gen_id}"


def upload_job_id(upload_id: str) -> str:
    return f"upload:{upload_id}"


def refresh_job_id(gen_id: str) -> str:
    return f"refresh:{gen_id}"


# Uploaded bytes outlive the api's wait for a worker by this long, then expire on their own.
UPLOAD_BYTES_GRACE_SECONDS = 30
# Which image an upload's public_url names is kept as long as Luma keeps presigned URLs useful.
UPLOAD_ACCOUNT_TTL_SECONDS = 30 * 86400
