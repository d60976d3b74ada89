// The gateway's HTTP API, as the page uses it: one method per endpoint, one error type.
// Every failure becomes an ApiError whose message is the gateway's own `message` (or, when the
// gateway could not be reached at all, a sentence saying so): the page never shows raw JSON.

export class ApiError extends Error {
  constructor(message, { status = 0, code = "network", retryAfter = null, errors = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.errors = errors;
  }

  get unauthorized() {
    return this.status === 401;
  }
}

const UNREACHABLE = "The gateway cannot be reached. Check that it is running, then try again.";

export class Api {
  constructor(key = "") {
    this.key = key;
  }

  async request(method, path, { json, form, query, key } = {}) {
    const headers = { Accept: "application/json" };
    const secret = key ?? this.key;
    if (secret) headers["Secret-Key"] = secret;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form; // the browser writes the multipart Content-Type with its boundary
    }
    let url = path;
    if (query) {
      const params = new URLSearchParams();
      for (const [name, value] of Object.entries(query)) {
        if (value !== null && value !== undefined && value !== "") params.set(name, String(value));
      }
      if ([...params].length) url += `?${params}`;
    }
    let response;
    try {
      response = await fetch(url, { method, headers, body, cache: "no-store", credentials: "omit" });
    } catch {
      throw new ApiError(UNREACHABLE);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null; // a proxy's HTML error page, say: described below, never shown
      }
    }
    if (!response.ok) {
      const fallback =
        response.status >= 500
          ? `The gateway failed to answer (HTTP ${response.status}). Try again in a moment.`
          : `The gateway refused the request (HTTP ${response.status}).`;
      throw new ApiError(typeof data?.message === "string" ? data.message : fallback, {
        status: response.status,
        code: typeof data?.code === "string" ? data.code : `http_${response.status}`,
        retryAfter: response.headers.get("Retry-After"),
        errors: Array.isArray(data?.errors) ? data.errors : null,
      });
    }
    return data ?? {};
  }

  // -- generations --------------------------------------------------------------------------
  async list({ offset = 0, limit = 24, state = null, ids = null } = {}) {
    const query = { offset, limit, state, ids: ids ? ids.join(",") : null };
    return (await this.request("GET", "/api/generations", { query })).data ?? [];
  }

  async create(item) {
    return (await this.request("POST", "/api/generations/create", { json: item })).data[0];
  }

  async batch(items) {
    return (await this.request("POST", "/api/generations/batch", { json: { items } })).data;
  }

  async cancel(id) {
    return (await this.request("POST", `/api/generations/${encodeURIComponent(id)}/cancel`)).data;
  }

  async upload(file) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    return (await this.request("POST", "/api/generations/upload", { form })).data;
  }

  async usage(key) {
    return (await this.request("GET", "/api/generations/usage", { key })).data;
  }

  // -- admin (with the admin key) -----------------------------------------------------------
  async accounts(key) {
    return (await this.request("GET", "/api/admin/accounts", { key })).data;
  }

  async addAccount(key, account) {
    return (await this.request("POST", "/api/admin/accounts", { key, json: account })).data;
  }

  async updateAccount(key, name, change) {
    const path = `/api/admin/accounts/${encodeURIComponent(name)}`;
    return (await this.request("PATCH", path, { key, json: change })).data;
  }

  async holders(key) {
    return (await this.request("GET", "/api/admin/holders", { key })).data;
  }

  async updateHolder(key, owner, change) {
    const path = `/api/admin/holders/${encodeURIComponent(owner)}`;
    return (await this.request("PATCH", path, { key, json: change })).data;
  }
}

// What a key opens: {holder, admin, adminEnabled}. Throws ApiError when the gateway is unreachable
// or broken, so that "this key is wrong" and "the gateway is down" never look alike.
export async function probe(key) {
  const api = new Api(key);
  const result = { holder: false, admin: false, adminEnabled: true };
  try {
    await api.list({ limit: 1 });
    result.holder = true;
  } catch (error) {
    if (!error.unauthorized) throw error;
  }
  try {
    await api.accounts(key);
    result.admin = true;
  } catch (error) {
    if (error.code === "admin_disabled") result.adminEnabled = false;
    else if (!error.unauthorized) throw error;
  }
  return result;
}
