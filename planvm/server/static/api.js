// The page's client of this server's /v1 API (the only server it talks to).

// A server with a token: the page is signed in by a session cookie (HttpOnly, so no script reads
// it), and its writes carry the session's CSRF token, which the server put in the page's shell.
const csrf = document.querySelector('meta[name="planvm-csrf"]')?.content || null;

export const signedIn = csrf !== null;

export function headers(extra) {
  const h = Object.assign({ "Content-Type": "application/json" }, extra || {});
  if (csrf) h["X-CSRF-Token"] = csrf;
  return h;
}

// The session ended (expired, signed out elsewhere, the server restarted or its token changed):
// to the sign-in form, which brings the browser back here.
export function toSignIn() {
  location.assign("/signin?" + new URLSearchParams({ next: location.pathname + location.search }));
}

export class ApiError extends Error {
  constructor(status, message, problems) {
    super(message + (problems && problems.length ? " — " + problems.join("; ") : ""));
    this.status = status;
  }
}

export async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
  if (response.status === 401) toSignIn();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || { message: response.statusText };
    throw new ApiError(response.status, error.message, error.problems);
  }
  return body;
}

export const post = (path, body) => api(path, { method: "POST", body: body === undefined ? undefined : JSON.stringify(body) });

export async function signOut() {
  try { await post("/signout"); } finally { location.assign("/signin"); }
}
