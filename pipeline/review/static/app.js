// samlabel review: the page's entry (an ES module, served as it is: no build step). Everything goes through
// the JSON API (same origin, token cookie); the modules: state (S, the status line), api, rle (masks),
// canvas (drawing, the mouse), queue (meta, filters, the image list), actions (edits, undo, save, keys).

import { S, status } from "./state.js";
import { setupCanvas } from "./canvas.js";
import { fillFilters, loadMeta, loadQueue } from "./queue.js";
import { openImage, setupKeys } from "./actions.js";

window.S = S; // for the browser tests and a curious console: the page's state, read-only by convention

async function main() {
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", "/"); // now a cookie
  window.addEventListener("unhandledrejection", (e) => status(`error: ${e.reason && e.reason.message}`, "error"));
  setupCanvas();
  setupKeys();
  await loadMeta();
  fillFilters();
  await loadQueue();
  if (S.queue.length) await openImage(S.queue[0].id);
}

main().catch((e) => status(`error: ${e.message}`, "error"));
