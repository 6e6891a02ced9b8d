// samlabel review: the dataset's meta (classes, flags, counts, SAM's state), the filters and the queue of images.

import { api } from "./api.js";
import { $, S, failed, status } from "./state.js";
import { openImage } from "./actions.js";
import { appendFlagChips } from "./canvas.js";

export async function loadMeta() {
  S.meta = await api("GET", "/api/meta");
  $("dataset").textContent = S.meta.dataset;
  const c = S.meta.counts;
  $("progress-text").textContent = `${c.reviewed.toLocaleString("en")} of ${c.images.toLocaleString("en")} reviewed`;
  $("progress-bar").style.width = `${c.images ? (100 * c.reviewed) / c.images : 0}%`;
  const pill = $("sam-status");
  pill.textContent = `SAM ${S.meta.sam}`;
  pill.className = `pill ${S.meta.sam}`;
  pill.title = S.meta.sam_error || "";
  if (S.meta.sam === "loading") setTimeout(refreshSam, 1500);
}

async function refreshSam() {
  let meta;
  try {
    meta = await api("GET", "/api/meta");
  } catch (e) {
    status(`SAM status not known (${e.message}); asking again`, "error");
    setTimeout(refreshSam, 1500); // keep polling: one failed answer must not freeze the pill
    return;
  }
  if ($("status").textContent.startsWith("SAM status not known")) status(`SAM ${meta.sam}`); // answered again
  S.meta.sam = meta.sam;
  S.meta.sam_error = meta.sam_error;
  const pill = $("sam-status");
  pill.textContent = `SAM ${meta.sam}`;
  pill.className = `pill ${meta.sam}`;
  pill.title = meta.sam_error || "";
  if (meta.sam === "loading") setTimeout(refreshSam, 1500);
}

export function fillFilters() {
  const add = (sel, values, label) => {
    for (const v of values) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = label ? label(v) : v;
      sel.appendChild(o);
    }
  };
  const c = S.meta.counts;
  add($("filter-flag"), S.meta.flags, (f) => `${f} (${c.flags[f] || 0})`);
  add($("filter-class"), S.meta.names, (n) => `${n} (${c.classes[n] || 0})`);
  add($("filter-split"), Object.keys(c.splits), (s) => `${s} (${c.splits[s]})`);
  for (const id of ["sel-class", "new-class"]) add($(id), S.meta.names);
  for (const id of ["filter-flag", "filter-class", "filter-split", "filter-reviewed", "queue-sort"]) {
    $(id).addEventListener("change", () => loadQueue().catch(failed("queue not loaded")));
  }
}

export async function loadQueue() {
  const q = new URLSearchParams();
  const pairs = [["flag", "filter-flag"], ["class_name", "filter-class"], ["split", "filter-split"], ["reviewed", "filter-reviewed"]];
  for (const [k, id] of pairs) if ($(id).value) q.set(k, $(id).value);
  if ($("queue-sort").value !== "queue") q.set("sort", $("queue-sort").value);
  S.queue = await api("GET", `/api/images?${q}`);
  renderQueue();
}

export function renderQueue() {
  const ol = $("queue");
  ol.textContent = "";
  for (const item of S.queue) {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    if (S.image && item.id === S.image.id) li.classList.add("current");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.file_name;
    name.title = `${item.split}/images/${item.file_name}`;
    const right = document.createElement("span");
    right.className = item.reviewed ? "done" : "meta";
    right.textContent = item.reviewed ? "\u2713 reviewed" : `${item.instances} obj`;
    const meta = document.createElement("span");
    meta.className = "meta flags";
    meta.textContent = item.split + (item.flagged ? ` \u00b7 ${item.flagged} flagged` : "");
    if (item.proposals) {
      const chip = document.createElement("span");
      chip.className = "proposal-chip";
      chip.textContent = `${item.proposals} unlabeled`;
      chip.title = "proposals: masks no instance accounts for";
      meta.appendChild(chip);
    }
    appendFlagChips(meta, item.flags.slice(0, 3));
    li.append(name, right, meta);
    li.addEventListener("click", () => openImage(item.id).catch(failed(`${item.file_name} not opened`)));
    ol.appendChild(li);
  }
  $("queue-count").textContent = `${S.queue.length} image${S.queue.length === 1 ? "" : "s"}`;
}
