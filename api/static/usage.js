// The pool's capacity as a bar: consumed of capacity, and what is left (GET /api/generations/usage,
// from what the workers last read of each account's usage; nothing here calls Luma).

import { $, h } from "./dom.js";

// Below this share left, the bar turns amber-red.
const LOW_SHARE = 0.1;

export class Usage {
  constructor(api) {
    this.api = api;
    this.bar = $("usage-bar");
    this.text = $("usage-text");
  }

  async refresh(key) {
    try {
      this.render(await this.api.usage(key));
    } catch (error) {
      this.bar.dataset.level = "";
      this.text.textContent = `Usage could not be read. ${error.message}`;
    }
  }

  render(usage) {
    const capacity = Number(usage?.capacity) || 0;
    const consumed = Number(usage?.consumed) || 0;
    const available = Number(usage?.available) || 0;
    const fill = this.bar.querySelector(".fill");
    if (!capacity) {
      fill.style.width = "0";
      this.bar.setAttribute("aria-valuemax", "0");
      this.bar.setAttribute("aria-valuenow", "0");
      this.bar.setAttribute("aria-valuetext", "unknown");
      this.text.textContent = "Not known yet: the workers read each account's usage from Luma shortly after they start.";
      return;
    }
    const share = Math.min(1, consumed / capacity);
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    this.bar.dataset.level = available / capacity < LOW_SHARE ? "high" : "";
    this.bar.setAttribute("aria-valuemax", String(capacity));
    this.bar.setAttribute("aria-valuenow", String(consumed));
    this.bar.setAttribute("aria-valuetext", `${consumed} of ${capacity} used, ${available} left`);
    this.text.replaceChildren(
      h("strong", null, consumed.toLocaleString()),
      ` of ${capacity.toLocaleString()} generations used this month, `,
      h("strong", { dataset: { available: String(available) } }, available.toLocaleString()),
      " left across the pool.",
    );
  }
}
