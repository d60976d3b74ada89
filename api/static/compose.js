// The create form: one prompt or a batch (one per line), aspect ratio, loop, and an image by file
// picker or drag and drop. The image is uploaded as soon as it is chosen (POST
// /api/generations/upload answers once it is on a Luma account), so Generate sends only its URL.

import { $, duration, plural, show, toast } from "./dom.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];

export class Composer {
  constructor(api, { onCreated, onUnauthorized }) {
    this.api = api;
    this.onCreated = onCreated;
    this.onUnauthorized = onUnauthorized;
    this.form = $("compose");
    this.prompt = $("prompt");
    this.submit = $("compose-submit");
    this.dropzone = $("dropzone");
    this.fileInput = $("image-file");
    this.image = null; // {file, objectUrl, publicUrl, uploading}
    this.busy = false;

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    for (const radio of this.form.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => this.modeChanged());
    }
    this.prompt.addEventListener("input", () => {
      this.fieldError(null);
      this.updateSubmit();
    });
    this.prompt.addEventListener("keydown", (event) => {
      // Ctrl/Cmd+Enter sends, as in most prompt boxes; Enter alone is a new line (batch needs it).
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.send();
      }
    });
    this.fileInput.addEventListener("change", () => {
      if (this.fileInput.files?.length) this.take(this.fileInput.files[0]);
    });
    $("image-remove").addEventListener("click", () => this.dropImage());
    for (const name of ["dragenter", "dragover"]) {
      this.dropzone.addEventListener(name, (event) => {
        event.preventDefault();
        this.dropzone.dataset.drag = "over";
      });
    }
    this.dropzone.addEventListener("dragleave", (event) => {
      if (!this.dropzone.contains(event.relatedTarget)) delete this.dropzone.dataset.drag;
    });
    this.dropzone.addEventListener("drop", (event) => {
      event.preventDefault();
      delete this.dropzone.dataset.drag;
      const file = event.dataTransfer?.files?.[0];
      if (file) this.take(file);
    });
    this.modeChanged();
  }

  get batch() {
    return this.form.querySelector('input[name="mode"]:checked')?.value === "batch";
  }

  prompts() {
    const text = this.prompt.value;
    if (!this.batch) return text.trim() ? [text.trim()] : [];
    return text.split("\n").map((line) => line.trim()).filter(Boolean);
  }

  modeChanged() {
    const batch = this.batch;
    $("prompt-label").textContent = batch ? "Prompts, one per line" : "Prompt";
    $("prompt-hint").textContent = batch
      ? "Each line becomes its own video. They are queued together: all of them, or none if one is refused."
      : "Describe the shot: subject, motion, light, camera. Ctrl+Enter sends.";
    this.prompt.rows = batch ? 8 : 4;
    this.prompt.placeholder = batch
      ? "A red fox running through fresh snow\nWaves rolling onto a black sand beach\nA paper boat drifting down a rainy street"
      : "A red fox running through fresh snow at golden hour";
    this.updateSubmit();
  }

  updateSubmit() {
    const count = this.prompts().length;
    this.submit.textContent = this.busy
      ? "Queuing…"
      : this.batch && count > 1
        ? `Generate ${count} videos`
        : "Generate";
    this.submit.disabled = this.busy;
  }

  fieldError(message) {
    const box = $("prompt-error");
    box.textContent = message ?? "";
    show(box, Boolean(message));
    if (message) this.prompt.setAttribute("aria-invalid", "true");
    else this.prompt.removeAttribute("aria-invalid");
  }

  async send() {
    if (this.busy) return;
    const prompts = this.prompts();
    if (!prompts.length) {
      this.fieldError(this.batch ? "Write at least one prompt, one per line." : "Write a prompt first.");
      this.prompt.focus();
      return;
    }
    if (this.image?.uploading) {
      this.fieldError("The image is still uploading: Generate again once it is ready.");
      return;
    }
    if (this.image && !this.image.publicUrl) {
      this.fieldError("The image could not be uploaded: remove it, or choose it again.");
      return;
    }
    const options = {
      aspect_ratio: $("aspect-ratio").value,
      loop: $("loop").checked,
    };
    if (this.image?.publicUrl) options.image = this.image.publicUrl;
    this.busy = true;
    this.fieldError(null);
    this.updateSubmit();
    try {
      let views;
      if (this.batch) {
        views = await this.api.batch(prompts.map((prompt) => ({ prompt, ...options })));
      } else {
        views = [await this.api.create({ prompt: prompts[0], ...options })];
      }
      this.onCreated(views);
      this.prompt.value = "";
      toast(queuedMessage(views), { kind: "ok" });
    } catch (error) {
      if (error.unauthorized) {
        this.onUnauthorized();
        return;
      }
      this.fieldError(error.message); // the gateway's refusals say what happened and when to retry
    } finally {
      this.busy = false;
      this.updateSubmit();
    }
  }

  async take(file) {
    this.dropImage();
    if (!IMAGE_TYPES.includes(file.type)) {
      this.imageState("error", "That file is not an image Luma takes: choose a PNG, JPEG, WebP or GIF.");
      return;
    }
    const image = { file, objectUrl: URL.createObjectURL(file), publicUrl: null, uploading: true };
    this.image = image;
    $("image-preview").src = image.objectUrl;
    $("image-name").textContent = file.name || "image";
    show(this.dropzone.querySelector(".drop-empty"), false);
    show(this.dropzone.querySelector(".drop-preview"), true);
    this.imageState("uploading", "Uploading…");
    try {
      const result = await this.api.upload(file);
      if (this.image !== image) return; // replaced or removed meanwhile
      image.publicUrl = result.public_url;
      image.uploading = false;
      this.dropzone.dataset.publicUrl = result.public_url;
      this.imageState("ready", "Uploaded: the next video starts from this image.");
    } catch (error) {
      if (this.image !== image) return;
      image.uploading = false;
      if (error.unauthorized) {
        this.onUnauthorized();
        return;
      }
      this.imageState("error", `The image was not uploaded. ${error.message}`);
    }
  }

  dropImage() {
    if (this.image?.objectUrl) URL.revokeObjectURL(this.image.objectUrl);
    this.image = null;
    this.fileInput.value = "";
    delete this.dropzone.dataset.publicUrl;
    $("image-preview").removeAttribute("src");
    show(this.dropzone.querySelector(".drop-empty"), true);
    show(this.dropzone.querySelector(".drop-preview"), false);
    this.imageState("empty", "");
  }

  imageState(state, message) {
    this.dropzone.dataset.state = state;
    $("image-status").textContent = message;
  }
}

function queuedMessage(views) {
  if (views.length > 1) return `${plural(views.length, "video")} queued.`;
  const [view] = views;
  const parts = ["Queued"];
  if (Number.isInteger(view?.queue_position)) parts.push(`#${view.queue_position} in line`);
  if (Number(view?.estimate_wait_seconds) >= 1) parts.push(`${duration(view.estimate_wait_seconds)} to wait`);
  return `${parts.join(", ")}.`;
}
