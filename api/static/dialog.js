// One modal form at a time, on the native <dialog> (it traps focus, closes on Escape and gives
// focus back to the button that opened it). `ask` builds the fields, and keeps the dialog open
// with the gateway's message when saving fails.

import { $, h, show } from "./dom.js";

export function ask({ title, intro = "", fields, submitLabel = "Save", onSubmit }) {
  const dialog = $("dialog");
  const form = $("dialog-form");
  const error = $("dialog-error");
  const submit = $("dialog-submit");
  $("dialog-title").textContent = title;
  $("dialog-intro").textContent = intro;
  show($("dialog-intro"), Boolean(intro));
  submit.textContent = submitLabel;
  show(error, false);
  const inputs = fields.map((field, index) => {
    const id = `dialog-field-${index}`;
    const common = {
      id,
      name: field.name,
      required: field.required,
      autocomplete: "off",
      spellcheck: "false",
      placeholder: field.placeholder,
      "aria-describedby": field.hint ? `${id}-hint` : null,
    };
    const input =
      field.type === "textarea"
        ? h("textarea", { ...common, rows: field.rows ?? 4 })
        : h("input", { ...common, type: field.type ?? "text", min: field.min, max: field.max, inputmode: field.inputmode });
    if (field.value !== undefined && field.value !== null) input.value = String(field.value);
    const wrap = h(
      "div",
      { class: "field" },
      h("label", { for: id }, field.label),
      input,
      field.hint ? h("p", { class: "hint", id: `${id}-hint` }, field.hint) : null,
    );
    return { field, input, wrap };
  });
  $("dialog-fields").replaceChildren(...inputs.map((entry) => entry.wrap));

  const close = () => {
    form.removeEventListener("submit", onSend);
    $("dialog-cancel").removeEventListener("click", onCancel);
    dialog.removeEventListener("close", onClose);
    if (dialog.open) dialog.close();
  };
  const onCancel = () => close();
  const onClose = () => close();
  const onSend = async (event) => {
    event.preventDefault();
    const values = {};
    for (const { field, input } of inputs) {
      const raw = input.value.trim();
      input.removeAttribute("aria-invalid");
      if (field.required && !raw) {
        input.setAttribute("aria-invalid", "true");
        error.textContent = `${field.label} is required.`;
        show(error, true);
        input.focus();
        return;
      }
      values[field.name] = field.type === "number" ? (raw === "" ? null : Number(raw)) : raw;
    }
    submit.disabled = true;
    try {
      await onSubmit(values);
      close();
    } catch (failure) {
      error.textContent = failure.message;
      show(error, true);
    } finally {
      submit.disabled = false;
    }
  };
  form.addEventListener("submit", onSend);
  $("dialog-cancel").addEventListener("click", onCancel);
  dialog.addEventListener("close", onClose);
  dialog.showModal();
  inputs[0]?.input.focus();
}
