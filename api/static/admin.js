// The admin view (with the admin key): every account's health and load, with the operator's
// actions (a new cookie, enable/disable, limits, a new account), and each key holder's queue.
// It is read again every 10 s while it is on screen: a few Redis reads, never a call to Luma.

import { ask } from "./dialog.js";
import { $, ago, h, show, toast } from "./dom.js";

const REFRESH_MS = 10_000;
const STATE_LABELS = { active: "OK", expired: "Expired", spent: "Spent", disabled: "Disabled" };

export class Admin {
  constructor(api, { key, onUnauthorized }) {
    this.api = api;
    this.key = key; // () => the admin key
    this.onUnauthorized = onUnauthorized;
    this.timer = null;
    $("accounts-refresh").addEventListener("click", () => this.refresh());
    $("account-add").addEventListener("click", () => this.addAccount());
    document.addEventListener("visibilitychange", () => {
      if (this.timer && document.visibilityState === "visible") this.refresh();
    });
  }

  start() {
    this.stop();
    this.refresh();
    this.timer = setInterval(() => {
      if (document.visibilityState === "visible") this.refresh();
    }, REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    await Promise.all([this.readAccounts(), this.readHolders()]);
  }

  async readAccounts() {
    try {
      const accounts = await this.api.accounts(this.key());
      this.renderAccounts(accounts);
      show($("accounts-error"), false);
      $("accounts-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (error.unauthorized) return this.onUnauthorized();
      $("accounts-error").textContent = `The accounts could not be read. ${error.message}`;
      show($("accounts-error"), true);
    }
  }

  async readHolders() {
    try {
      this.renderHolders(await this.api.holders(this.key()));
      show($("holders-error"), false);
    } catch (error) {
      if (error.unauthorized) return this.onUnauthorized();
      $("holders-error").textContent = `The key holders could not be read. ${error.message}`;
      show($("holders-error"), true);
    }
  }

  renderAccounts(accounts) {
    const body = $("accounts").tBodies[0];
    body.replaceChildren(...accounts.map((account) => this.accountRow(account)));
    show($("accounts-empty"), accounts.length === 0);
  }

  accountRow(account) {
    const badges = [h("span", { class: `badge ${account.state}` }, STATE_LABELS[account.state] ?? account.state)];
    if (account.breaker_open) {
      badges.push(h("span", { class: "badge breaker", title: "Repeated upstream failures: resting briefly" }, "Circuit open"));
    } else if (account.cooling) {
      badges.push(h("span", { class: "badge cooling", title: account.cooling_reason ?? "" }, "Cooling"));
    }
    const capacity = account.capacity ?? null;
    const available = account.available ?? null;
    const left =
      available === null
        ? h("span", { class: "muted" }, "not read yet")
        : [
            capacity ? `${available.toLocaleString()} of ${capacity.toLocaleString()}` : available.toLocaleString(),
            capacity ? h("div", { class: "mini-bar", "aria-hidden": "true" }, bar(available / capacity)) : null,
          ];
    const problem = account.state_reason || (account.cooling ? account.cooling_reason : "");
    const since = account.state_at ? ago(account.state_at * 1000) : "";
    const actions = [
      h("button", { type: "button", class: `button small${account.state === "expired" ? " primary" : ""}`,
        onclick: () => this.newCookie(account) }, "New cookie"),
      h("button", { type: "button", class: "button ghost small", onclick: () => this.toggle(account) },
        account.state === "disabled" ? "Enable" : "Disable"),
      h("button", { type: "button", class: "button ghost small", onclick: () => this.limits(account) }, "Limits"),
    ];
    return h(
      "tr",
      { dataset: { account: account.name, state: account.state } },
      h("td", { class: "name", "data-label": "Account" }, account.name, h("span", { class: "sub" }, account.base_url)),
      h("td", { "data-label": "State" }, badges),
      h("td", { "data-label": "In flight" }, `${account.in_flight} of ${account.limit}`,
        account.max_queue !== null && account.max_queue !== undefined
          ? h("span", { class: "sub" }, `queue cap ${account.max_queue}`) : null),
      h("td", { "data-label": "Capacity left" }, left),
      h("td", { "data-label": "Last problem" }, problem || h("span", { class: "muted" }, "none"),
        problem && since ? h("span", { class: "sub" }, since) : null),
      h("td", { class: "actions-cell", "data-label": "" }, actions),
    );
  }

  renderHolders(holders) {
    const body = $("holders").tBodies[0];
    body.replaceChildren(
      ...holders.map((holder) => {
        const own = new Set(holder.overridden ?? []);
        const mark = (name) => (own.has(name) ? h("span", { class: "sub" }, "set here") : null);
        return h(
          "tr",
          { dataset: { holder: holder.owner } },
          h("td", { class: "name mono", "data-label": "Holder" }, holder.owner),
          h("td", { "data-label": "Waiting" }, holder.waiting.toLocaleString()),
          h("td", { "data-label": "Creates last minute" }, holder.creates_last_minute.toLocaleString()),
          h("td", { "data-label": "May queue" }, holder.max_queued.toLocaleString(), mark("max_queued")),
          h("td", { "data-label": "Creates per minute" },
            holder.creates_per_minute ? holder.creates_per_minute.toLocaleString() : "no limit",
            mark("creates_per_minute")),
          h("td", { class: "actions-cell", "data-label": "" },
            h("button", { type: "button", class: "button ghost small", onclick: () => this.holderLimits(holder) }, "Limits")),
        );
      }),
    );
  }

  // -- actions --------------------------------------------------------------------------------
  newCookie(account) {
    ask({
      title: `New cookie for ${account.name}`,
      intro:
        "Paste the Cookie header of a browser session logged in to this Luma account (or just its " +
        "access_token). It is stored for the workers and never shown again. An expired account takes work at once.",
      fields: [{ name: "cookie", label: "Cookie", type: "textarea", required: true, placeholder: "access_token=eyJ…" }],
      submitLabel: "Save cookie",
      onSubmit: async ({ cookie }) => {
        const view = await this.api.updateAccount(this.key(), account.name, { cookie });
        toast(
          view.state === "active" ? `${account.name} is active again.` : `Cookie saved; ${account.name} is ${view.state}.`,
          { kind: "ok" },
        );
        await this.refresh();
      },
    });
  }

  async toggle(account) {
    const enable = account.state === "disabled";
    try {
      await this.api.updateAccount(this.key(), account.name, { enabled: enable });
      toast(enable ? `${account.name} takes work again.` : `${account.name} takes no new work.`, { kind: "ok" });
    } catch (error) {
      if (error.unauthorized) return this.onUnauthorized();
      toast(error.message, { kind: "error" });
    }
    await this.refresh();
  }

  limits(account) {
    ask({
      title: `Limits of ${account.name}`,
      fields: [
        { name: "max_concurrency", label: "Generations at once", type: "number", min: 1, max: 100, required: true,
          value: account.limit, inputmode: "numeric" },
        { name: "max_queue", label: "Most waiting on its behalf", type: "number", min: 0, value: account.max_queue,
          inputmode: "numeric", hint: "Leave empty for no bound of its own (the pool's bound still holds)." },
      ],
      onSubmit: async (values) => {
        await this.api.updateAccount(this.key(), account.name, values);
        toast(`Limits of ${account.name} saved.`, { kind: "ok" });
        await this.refresh();
      },
    });
  }

  addAccount() {
    ask({
      title: "Add an account",
      intro: "A Luma account joins the pool at once. Use a session that no browser uses any more: its cookies rotate.",
      fields: [
        { name: "name", label: "Name", required: true, placeholder: "main", hint: "Letters, digits, dot, dash, underscore." },
        { name: "cookie", label: "Cookie", type: "textarea", required: true, placeholder: "access_token=eyJ…" },
        { name: "base_url", label: "Base URL", type: "url", placeholder: "Luma's web API",
          hint: "Leave empty for Luma's web API." },
        { name: "max_concurrency", label: "Generations at once", type: "number", min: 1, max: 100, value: 3,
          inputmode: "numeric" },
      ],
      submitLabel: "Add account",
      onSubmit: async (values) => {
        const account = { name: values.name, cookie: values.cookie };
        if (values.base_url) account.base_url = values.base_url;
        if (values.max_concurrency !== null) account.max_concurrency = values.max_concurrency;
        const view = await this.api.addAccount(this.key(), account);
        toast(`${view.name} joined the pool.`, { kind: "ok" });
        await this.refresh();
      },
    });
  }

  holderLimits(holder) {
    const own = new Set(holder.overridden ?? []);
    ask({
      title: `Limits of holder ${holder.owner}`,
      intro: "Empty goes back to the gateway's default (HOLDER_MAX_QUEUED, HOLDER_CREATES_PER_MINUTE).",
      fields: [
        { name: "max_queued", label: "Most waiting at once", type: "number", min: 1, inputmode: "numeric",
          value: own.has("max_queued") ? holder.max_queued : null, placeholder: `default: ${holder.max_queued}` },
        { name: "creates_per_minute", label: "Creates per minute (0: no limit)", type: "number", min: 0,
          inputmode: "numeric", value: own.has("creates_per_minute") ? holder.creates_per_minute : null,
          placeholder: `default: ${holder.creates_per_minute}` },
      ],
      onSubmit: async (values) => {
        await this.api.updateHolder(this.key(), holder.owner, values);
        toast(`Limits of ${holder.owner} saved.`, { kind: "ok" });
        await this.readHolders();
      },
    });
  }
}

function bar(share) {
  const span = h("span");
  span.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  return span;
}
