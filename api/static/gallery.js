// The gallery: the holder's generations newest first, one card each, kept current by the live
// stream. Pages come from GET /api/generations (with the state filter); after that a card changes
// only when an event about it arrives, so nothing polls while the stream is connected.

import { $, ago, debounce, duration, h, parseTime, safeUrl, show, toast } from "./dom.js";

const PAGE_SIZE = 24;
// How far along a state is. An answer that would move a card back is older than what the card
// shows (a page read before an event, say) and is dropped.
const RANK = { pending: 0, processing: 1, completed: 2, failed: 2 };
const STATE_LABELS = { pending: "Pending", processing: "Processing", completed: "Completed", failed: "Failed" };
const FAILURES = {
  cancelled: "Cancelled before it reached Luma",
  upstream_failed: "Luma could not render it",
  upstream_rejected: "Luma refused the request as sent",
  indeterminate_create: "Luma may have received it, so it was not sent again (no double charge)",
  upstream_pending_timeout: "Luma kept it waiting too long",
  upstream_silent: "Luma stopped answering about it",
  completed_without_video: "Luma finished without a video",
  no_account: "No account could take it in time",
  start_deadline_exceeded: "Not started before its deadline",
  image_unreachable: "Its image could not be fetched (nothing was spent)",
  upstream_image_missing: "Luma could not find its image (upload it again)",
};
const EMPTY = {
  "": ["No generations yet", "Write a prompt and press Generate: the video appears here as soon as it is queued, and plays when it is done."],
  pending: ["Nothing is waiting", "Generations waiting for an account, or in Luma's own queue, show here."],
  processing: ["Nothing is rendering", "Generations Luma is rendering right now show here."],
  completed: ["No finished videos yet", "Completed generations show here with a player."],
  failed: ["Nothing has failed", "Failed and cancelled generations show here, with the reason."],
};
// Positions in the queue move when generations ahead leave it; they are read again at most this often.
const REFRESH_OPEN_MS = 1500;
const IDS_PER_READ = 100;

export function failureText(reason) {
  if (!reason) return "It failed";
  return FAILURES[reason] ?? reason.replaceAll("_", " ");
}

export class Gallery {
  constructor(api, { onUnauthorized }) {
    this.api = api;
    this.onUnauthorized = onUnauthorized;
    this.filter = "";
    this.entries = new Map(); // id -> {view, el, signature, until}
    this.done = false;
    this.loading = false;
    this.failed = false;
    this.token = 0; // bumped on every reload, so an answer for an older filter is dropped
    this.list = $("cards");
    this.refreshOpen = throttle(() => this.readOpen(), REFRESH_OPEN_MS);

    for (const chip of $("filters").querySelectorAll("[data-filter]")) {
      chip.addEventListener("click", () => this.setFilter(chip.dataset.filter));
    }
    $("more").addEventListener("click", () => this.loadMore());
    $("gallery-retry").addEventListener("click", () => (this.entries.size ? this.loadMore() : this.reload()));
    // Infinite scroll: the next page loads as the end of the list comes into view.
    this.observer = new IntersectionObserver(
      (seen) => {
        if (seen.some((entry) => entry.isIntersecting) && !this.failed) this.loadMore();
      },
      { rootMargin: "600px 0px" },
    );
    this.observer.observe($("more-box"));
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  setFilter(filter) {
    if (filter === this.filter) return;
    this.filter = filter;
    for (const chip of $("filters").querySelectorAll("[data-filter]")) {
      chip.setAttribute("aria-pressed", String(chip.dataset.filter === filter));
    }
    this.reload();
  }

  clear() {
    this.token += 1;
    this.entries.clear();
    this.list.replaceChildren();
    this.done = false;
    this.failed = false;
    this.loading = false;
    show($("gallery-error"), false);
    this.updateChrome();
  }

  reload() {
    this.clear();
    return this.loadMore();
  }

  async loadMore() {
    if (this.loading || this.done) return;
    const token = this.token;
    this.loading = true;
    this.failed = false;
    show($("gallery-error"), false);
    this.updateChrome();
    try {
      // What is shown is the start of the filtered list, so its length is the next offset.
      const page = await this.api.list({ offset: this.entries.size, limit: PAGE_SIZE, state: this.filter });
      if (token !== this.token) return;
      this.done = page.length < PAGE_SIZE;
      for (const view of page) this.put(view, { append: true });
    } catch (error) {
      if (token !== this.token) return;
      if (error.unauthorized) {
        this.onUnauthorized();
        return;
      }
      this.failed = true;
      $("gallery-error-text").textContent = `Your generations could not be loaded. ${error.message}`;
      show($("gallery-error"), true);
    } finally {
      if (token === this.token) {
        this.loading = false;
        this.updateChrome();
      }
    }
  }

  // A generation from the live stream.
  fromEvent(view) {
    this.put(view);
    // Its move may change where the others wait: read their places again (at most every 1.5 s).
    if (this.openIds().some((id) => id !== view.id)) this.refreshOpen();
  }

  // Generations just created from the form: on top, whatever the filter they would fall under.
  created(views) {
    for (const view of views) this.put(view, { created: true });
  }

  // Read again every card that is not finished: after the stream (re)connects, whatever changed
  // before it was listening is caught up; in between, the places in the queue.
  async readOpen() {
    const ids = this.openIds().slice(0, IDS_PER_READ);
    if (!ids.length) return;
    try {
      for (const view of await this.api.list({ ids, limit: IDS_PER_READ })) this.put(view);
    } catch (error) {
      if (error.unauthorized) this.onUnauthorized();
      // Otherwise the next event or reconnect reads them again; a toast per failure would be noise.
    }
  }

  openIds() {
    return [...this.entries.values()].filter((e) => RANK[e.view.state] < 2).map((e) => e.view.id);
  }

  put(view, { append = false, created = false } = {}) {
    if (!view || typeof view.id !== "string") return;
    const entry = this.entries.get(view.id);
    if (entry) {
      if ((RANK[view.state] ?? 0) < (RANK[entry.view.state] ?? 0)) return;
      if (!this.matches(view) && !created) {
        this.remove(view.id);
        return;
      }
      entry.view = view;
      this.render(entry);
      return;
    }
    if (!this.matches(view) && !created) return;
    const fresh = { view, el: h("li", { class: "card", dataset: { id: view.id } }), signature: "", until: null };
    if (append) {
      this.list.append(fresh.el);
    } else {
      // Newest first by creation time; one older than every card loaded so far belongs to a page
      // not loaded yet, and appears when that page does.
      // created_at is ISO 8601 in UTC with microseconds, so its text sorts as its time does (a
      // batch's items are a microsecond apart: milliseconds would tie them).
      const at = String(view.created_at);
      const after = [...this.list.children].find(
        (el) => String(this.entries.get(el.dataset.id)?.view.created_at) < at,
      );
      if (after) this.list.insertBefore(fresh.el, after);
      else if (this.done || !this.entries.size || created) this.list.append(fresh.el);
      else return;
    }
    this.entries.set(view.id, fresh);
    this.render(fresh);
    this.updateChrome();
  }

  remove(id) {
    const entry = this.entries.get(id);
    if (!entry) return;
    entry.el.remove();
    this.entries.delete(id);
    this.updateChrome();
  }

  matches(view) {
    return !this.filter || view.state === this.filter;
  }

  render(entry) {
    const view = entry.view;
    const video = view.video ?? {};
    // Everything the card shows; a card whose picture did not change is left alone, so a playing
    // video is never reset.
    const signature = JSON.stringify([
      view.state,
      view.queue_position,
      view.estimate_wait_seconds,
      view.failure_reason,
      view.failure_message,
      video.url,
      view.image,
    ]);
    if (signature === entry.signature) return;
    entry.signature = signature;
    const wait = Number(view.estimate_wait_seconds);
    entry.until = view.state !== "completed" && view.state !== "failed" && wait > 0 ? Date.now() + wait * 1000 : null;
    entry.el.dataset.state = view.state;
    entry.el.replaceChildren(this.media(entry), this.body(entry));
  }

  media(entry) {
    const view = entry.view;
    const box = h("div", { class: "media" });
    const videoUrl = safeUrl(view.video?.url);
    if (view.state === "completed" && videoUrl) {
      const player = h("video", {
        controls: true,
        preload: "metadata",
        playsinline: true,
        src: videoUrl,
        poster: safeUrl(view.video?.thumbnail),
        "aria-label": `Video: ${view.prompt}`,
      });
      // A file this browser cannot decode keeps its element (and source) but says so plainly.
      player.addEventListener("error", () => {
        if (box.classList.contains("unplayable")) return;
        box.classList.add("unplayable");
        player.controls = false;
        box.append(
          h("div", { class: "placeholder" }, h("span", { class: "big" }, "Video ready"),
            h("span", { class: "muted" }, "This browser cannot play it here: use Download.")),
        );
      });
      box.append(player);
    } else {
      box.append(this.placeholder(entry));
    }
    const image = safeUrl(view.image);
    if (image && view.state !== "completed") {
      const thumb = h("img", { class: "image-used", src: image, alt: "The image it starts from" });
      thumb.addEventListener("error", () => thumb.remove());
      box.append(thumb);
    }
    return box;
  }

  placeholder(entry) {
    const view = entry.view;
    const wait = entry.until ? h("span", { class: "muted eta" }, duration((entry.until - Date.now()) / 1000)) : null;
    if (view.state === "pending") {
      // In our queue it has a place; then it takes an account's slot; then it waits in Luma's queue.
      const place = Number.isInteger(view.queue_position)
        ? `#${view.queue_position.toLocaleString()} in line`
        : view.upstream_id
          ? "Queued at Luma"
          : "Starting…";
      return h("div", { class: "placeholder" }, h("span", { class: "big" }, place), wait);
    }
    if (view.state === "processing") {
      return h("div", { class: "placeholder" }, h("span", { class: "big" }, "Rendering…"), wait);
    }
    if (view.state === "failed") {
      const title = view.failure_reason === "cancelled" ? "Cancelled" : "Failed";
      return h("div", { class: "placeholder" }, h("span", { class: "big" }, title));
    }
    return h("div", { class: "placeholder" }, h("span", { class: "big" }, "Finished"),
      h("span", { class: "muted" }, "Luma gave no video for it"));
  }

  body(entry) {
    const view = entry.view;
    const created = parseTime(view.created_at);
    const meta = h(
      "div",
      { class: "meta" },
      h("span", { class: `badge ${view.state}` }, STATE_LABELS[view.state] ?? view.state),
      Number.isFinite(created)
        ? h("time", { datetime: view.created_at, title: new Date(created).toLocaleString() }, ago(created))
        : null,
      view.aspect_ratio ? h("span", null, view.aspect_ratio) : null,
      view.batch_id ? h("span", { title: `Batch ${view.batch_id}` }, "batch") : null,
    );
    const parts = [h("p", { class: "prompt", title: view.prompt }, view.prompt), meta];
    if (view.state === "failed") {
      const detail = view.failure_message && view.failure_reason !== "cancelled" ? view.failure_message : null;
      parts.push(h("p", { class: "reason" }, failureText(view.failure_reason), detail ? h("span", { class: "muted" }, detail) : null));
    }
    const actions = [];
    const download = safeUrl(view.video?.download_url) ?? safeUrl(view.video?.url);
    if (view.state === "completed" && download) {
      actions.push(h("a", { class: "button small", href: download, download: "", target: "_blank", rel: "noopener" }, "Download"));
    }
    // Once Luma has it (an upstream id) it cannot be taken back: the web API has no cancel.
    if (view.state === "pending" && !view.upstream_id) {
      const button = h("button", { type: "button", class: "button ghost small danger" }, "Cancel");
      button.addEventListener("click", () => this.cancel(view.id, button));
      actions.push(button);
    }
    if (actions.length) parts.push(h("div", { class: "card-actions" }, actions));
    return h("div", { class: "body" }, parts);
  }

  async cancel(id, button) {
    button.disabled = true;
    try {
      this.put(await this.api.cancel(id), { created: true });
      toast("Cancelled: it will not be sent to Luma.", { kind: "ok" });
    } catch (error) {
      if (error.unauthorized) return this.onUnauthorized();
      button.disabled = false;
      const message =
        error.code === "already_submitted"
          ? "Too late to cancel: it has already been sent to Luma."
          : error.code === "already_finished"
            ? "It has already finished."
            : error.message;
      toast(message, { kind: "error" });
    }
  }

  // Once a second: the waits count down; every half minute, "2 minutes ago" moves on too.
  tick() {
    const now = Date.now();
    for (const entry of this.entries.values()) {
      if (!entry.until) continue;
      const eta = entry.el.querySelector(".eta");
      if (eta) eta.textContent = duration((entry.until - now) / 1000);
    }
    this.ticks = (this.ticks ?? 0) + 1;
    if (this.ticks % 30 === 0) {
      for (const time of this.list.querySelectorAll("time[datetime]")) {
        time.textContent = ago(parseTime(time.getAttribute("datetime")));
      }
    }
  }

  updateChrome() {
    const empty = !this.entries.size && !this.loading && !this.failed;
    if (empty) {
      const [title, text] = EMPTY[this.filter] ?? EMPTY[""];
      $("gallery-empty-title").textContent = title;
      $("gallery-empty-text").textContent = text;
    }
    show($("gallery-empty"), empty);
    show($("loading"), this.loading);
    show($("more"), !this.done && !this.loading && !this.failed && this.entries.size > 0);
  }
}

// Calls `fn` at most once per `wait` ms, and once more after the last call of a burst.
function throttle(fn, wait) {
  let last = 0;
  const trailing = debounce(() => {
    last = Date.now();
    fn();
  }, wait);
  return () => {
    if (Date.now() - last >= wait) {
      last = Date.now();
      fn();
    } else {
      trailing();
    }
  };
}
