// The page's client of this server's /v1 API (the only server it talks to).

// A token (when the server wants one) is kept by the browser session: #token=... once in the URL.
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) {
  sessionStorage.setItem("planvm-token", hashToken);
  history.replaceState(history.state, "", location.pathname + location.search);
}

export function headers(extra) {
  const h = Object.assign({ "Content-Type": "application/json" }, extra || {});
  const token = sessionStorage.getItem("planvm-token");
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

export class ApiError extends Error {
  constructor(status, message, problems) {
    super(message + (problems && problems.length ? " — " + problems.join("; ") : ""));
    this.status = status;
  }
}

export async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || { message: response.statusText };
    throw new ApiError(response.status, error.message, error.problems);
  }
  return body;
}

export const post = (path, body) => api(path, { method: "POST", body: body === undefined ? undefined : JSON.stringify(body) });
