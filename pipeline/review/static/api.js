// samlabel review: the JSON API (same origin, token cookie). An error answer becomes an Error whose message
// is the server's `detail` as sent, with its HTTP status (`.status`) and body (`.data`).

export async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try {
    data = await res.json();
  } catch (e) {
    data = null;
  }
  if (!res.ok) {
    const detail = data && data.detail;
    const err = new Error((typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : res.statusText) || String(res.status));
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}
