// The dashboard's entry point: sign-in, the two views (#studio, #admin), and the wiring between
// the live stream, the gallery, the form and the usage bar.
//
// Keys live in this browser's localStorage until "Sign out" clears them: the holder's Secret-Key
// (generations) and, when given, the admin key (the admin view). A gateway without SECRET_KEY is
// open: there is no key to ask for, only the admin key.

import { Admin } from "./admin.js";
import { Api, ApiError } from "./api.js";
import { Composer } from "./compose.js";
import { $, debounce, show, toast } from "./dom.js";
import { Gallery } from "./gallery.js";
import { LiveStream } from "./live.js";
import { Usage } from "./usage.js";

const STORED_KEY = "luma-queue.key";
const STORED_ADMIN_KEY = "luma-queue.admin-key";
const LIVE_LABELS = {
  live: "Live",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  offline: "Offline, retrying…",
};

const api = new Api();
const session = { open: false, adminEnabled: true, holder: false, adminKey: "" };
let live = null;

const gallery = new Gallery(api, { onUnauthorized: () => expired() });
const composer = new Composer(api, { onCreated: (views) => gallery.created(views), onUnauthorized: () => expired() });
const usage = new Usage(api);
const admin = new Admin(api, { key: () => session.adminKey, onUnauthorized: () => adminRefused() });
// A generation that finished changed the pool's usage; read it once the burst has passed.
const refreshUsage = debounce(() => usage.refresh(usageKey()), 2000);

// -- what a key opens ----------------------------------------------------------------------------
async function holds(key) {
  try {
    await new Api(key).list({ limit: 1 });
    return true;
  } catch (error) {
    if (error.unauthorized) return false;
    throw error;
  }
}

// "yes", "no", or "disabled" (the gateway has no ADMIN_KEY).
async function administers(key) {
  try {
    await api.accounts(key);
    return "yes";
  } catch (error) {
    if (error.code === "admin_disabled") return "disabled";
    if (error.unauthorized) return "no";
    throw error;
  }
}

// -- start-up ------------------------------------------------------------------------------------
async function boot() {
  showOnly("boot");
  const storedKey = localStorage.getItem(STORED_KEY) ?? "";
  const storedAdmin = localStorage.getItem(STORED_ADMIN_KEY) ?? "";
  try {
    session.open = await holds("");
    const adminState = await administers(storedAdmin);
    session.adminEnabled = adminState !== "disabled";
    const holder = session.open || (storedKey ? await holds(storedKey) : false);
    if (storedKey && !holder) localStorage.removeItem(STORED_KEY);
    if (storedAdmin && adminState !== "yes") localStorage.removeItem(STORED_ADMIN_KEY);
    const adminKey = adminState === "yes" ? storedAdmin : "";
    // An open gateway has no key to ask for: straight in (the admin view asks for its own).
    if (session.open || (storedKey && holder) || adminKey) {
      enter({ key: session.open ? "" : storedKey, holder, adminKey });
    } else {
      const forgotten = (storedKey && !holder) || (storedAdmin && adminState !== "yes");
      signInScreen(forgotten ? "Your saved key is no longer accepted. Sign in again." : null);
    }
  } catch (error) {
    fatal(error);
  }
}

function fatal(error) {
  $("fatal-message").textContent =
    error instanceof ApiError ? error.message : "Something went wrong while starting. Reload the page.";
  showOnly("fatal");
}

function showOnly(id) {
  for (const section of ["boot", "fatal", "signin", "studio", "admin"]) show($(section), section === id);
  $("boot").setAttribute("aria-busy", String(id === "boot"));
}

// -- signing in and out --------------------------------------------------------------------------
function signInScreen(message = null) {
  show($("tabs"), false);
  show($("session"), false);
  signInError(message);
  showOnly("signin");
  $("signin-key").value = "";
  $("signin-key").focus();
}

function signInError(message) {
  $("signin-error").textContent = message ?? "";
  show($("signin-error"), Boolean(message));
  if (message) $("signin-key").setAttribute("aria-invalid", "true");
  else $("signin-key").removeAttribute("aria-invalid");
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("signin-key").value.trim();
  const button = $("signin-submit");
  if (!key) {
    signInError("Enter your key.");
    $("signin-key").focus();
    return;
  }
  button.disabled = true;
  signInError(null);
  try {
    // A holder's key is not the admin key: only a key that holds nothing is tried as the admin's.
    const holder = await holds(key);
    const adminState = holder ? "no" : await administers(key);
    if (adminState === "disabled") session.adminEnabled = false;
    if (!holder && adminState !== "yes") {
      signInError("This key was not accepted. Check it and try again.");
      $("signin-key").select();
      return;
    }
    if (holder) localStorage.setItem(STORED_KEY, key);
    if (adminState === "yes") localStorage.setItem(STORED_ADMIN_KEY, key);
    enter({ key: holder ? key : "", holder, adminKey: adminState === "yes" ? key : "" });
    // The form that had focus is gone: put it where the work starts.
    if (holder && location.hash !== "#admin") $("prompt").focus();
    else $("main").focus();
  } catch (error) {
    signInError(error.message);
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", () => signOut());

function signOut(message = null) {
  localStorage.removeItem(STORED_KEY);
  localStorage.removeItem(STORED_ADMIN_KEY);
  live?.stop();
  live = null;
  admin.stop();
  gallery.clear();
  api.key = "";
  session.holder = false;
  session.adminKey = "";
  if (location.hash) history.replaceState(null, "", location.pathname);
  if (session.open) enter({ key: "", holder: true, adminKey: "" }); // nothing else to sign out of
  else signInScreen(message);
}

function expired() {
  signOut("Your key is no longer accepted. Sign in again.");
}

function adminRefused() {
  localStorage.removeItem(STORED_ADMIN_KEY);
  session.adminKey = "";
  admin.stop();
  if (!session.holder) {
    signOut("The admin key is no longer accepted. Sign in again.");
    return;
  }
  adminUnlock("The admin key is no longer accepted.");
}

// -- the signed-in page --------------------------------------------------------------------------
function enter({ key, holder, adminKey }) {
  api.key = key;
  session.holder = holder;
  session.adminKey = adminKey;
  show($("tabs"), true);
  show($("tab-admin"), session.adminEnabled);
  show($("session"), true);
  showSignOut();
  const roles = [session.open ? "Open gateway" : holder ? "Signed in" : null, adminKey ? "admin" : null];
  $("who").textContent = roles.filter(Boolean).join(" · ");
  show($("live-status"), holder);
  show($("compose"), holder);
  show($("no-holder"), !holder);
  show($("filters"), holder);
  if (holder) {
    gallery.reload();
    startLive(key);
  } else {
    gallery.clear();
    show($("gallery-empty"), false);
  }
  usage.refresh(usageKey());
  if (!holder && location.hash !== "#admin") history.replaceState(null, "", "#admin");
  route();
}

// On an open gateway there is only the admin key to forget.
function showSignOut() {
  show($("sign-out"), !session.open || Boolean(session.adminKey));
}

function usageKey() {
  return session.holder ? undefined : session.adminKey;
}

function startLive(key) {
  live?.stop();
  live = new LiveStream({
    key,
    onGeneration: (view) => {
      gallery.fromEvent(view);
      if (view.state === "completed" || view.state === "failed") refreshUsage();
    },
    onStatus: (status) => {
      const box = $("live-status");
      box.dataset.status = status;
      box.querySelector(".label").textContent = LIVE_LABELS[status] ?? status;
      box.title =
        status === "live"
          ? "Cards update as their generations change."
          : "The live stream is down; cards update again once it is back.";
    },
    // Whatever changed before the stream was listening is read once.
    onConnected: () => gallery.readOpen(),
    // The browser gave up on the stream: a key no longer accepted is the one reason not to retry.
    onGiveUp: async () => {
      try {
        if (!(await holds(key))) expired();
      } catch {
        // the gateway is down: the stream retries by itself
      }
    },
  });
  live.start();
}

function route() {
  if (!session.holder && !session.adminKey) return;
  const view = location.hash === "#admin" && session.adminEnabled ? "admin" : "studio";
  showOnly(view);
  for (const [name, tab] of [["studio", $("tab-studio")], ["admin", $("tab-admin")]]) {
    if (name === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (view === "admin") {
    if (session.adminKey) {
      show($("admin-unlock"), false);
      show($("admin-body"), true);
      admin.start();
    } else {
      adminUnlock();
    }
  } else {
    admin.stop();
  }
}

function adminUnlock(message = null) {
  show($("admin-body"), false);
  show($("admin-unlock"), true);
  $("admin-key-error").textContent = message ?? "";
  show($("admin-key-error"), Boolean(message));
  $("admin-key").value = "";
}

$("admin-unlock").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("admin-key").value.trim();
  const error = $("admin-key-error");
  if (!key) {
    error.textContent = "Enter the admin key.";
    show(error, true);
    return;
  }
  try {
    const state = await administers(key);
    if (state !== "yes") {
      error.textContent =
        state === "disabled" ? "This gateway has no admin key (ADMIN_KEY is not set)." : "This is not the admin key.";
      show(error, true);
      return;
    }
  } catch (failure) {
    error.textContent = failure.message;
    show(error, true);
    return;
  }
  localStorage.setItem(STORED_ADMIN_KEY, key);
  session.adminKey = key;
  $("who").textContent = [$("who").textContent, "admin"].filter(Boolean).join(" · ");
  showSignOut();
  route();
});

window.addEventListener("hashchange", () => {
  route();
  $("main").focus({ preventScroll: true });
});
$("fatal-retry").addEventListener("click", () => boot());
window.addEventListener("unhandledrejection", (event) => {
  // Every expected failure is handled where it happens; anything else says so instead of going silent.
  toast(event.reason instanceof ApiError ? event.reason.message : "Something went wrong. Reload the page.", {
    kind: "error",
  });
});

boot();
