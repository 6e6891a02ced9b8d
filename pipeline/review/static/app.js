// samlabel review: the page. Everything goes through the JSON API (same origin, token cookie).
// Undo and redo live here: the server keeps no edit history, each save replaces the image's state.
"use strict";

const $ = (id) => document.getElementById(id);

const S = {
  meta: null,
  queue: [],
  image: null, // GET /api/images/{id}
  inst: [], // working copy: {key, id, cls, rle, box, mask_score, confidence, flags, signals, edited, points, candidates, cand, accepted}
  reviewed: false,
  sel: -1,
  undo: [],
  redo: [],
  dirty: false,
  mode: null, // null | "box" (redraw the selected box) | "new" (add an object)
  drag: null,
  view: { s: 1, ox: 0, oy: 0 },
  img: null,
  hide: false,
  busy: 0,
  pending: null,
  saving: false,
  nextKey: 1,
  gen: 0, // bumped each time an image starts opening: answers for an earlier one are dropped
  masks: new Map(), // rle counts -> decoded mask {canvas, buf, x0, y0, w, h, area}
};

// ----------------------------------------------------------------------------------------- API

async function api(method, path, body) {
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
    const err = new Error((data && data.detail ? JSON.stringify(data.detail) : res.statusText) || String(res.status));
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
}

// A failed request the user did not start by hand (polling, the queue, opening an image): said, not swallowed.
function failed(what) {
  return (e) => status(`${what}: ${e.message}`, "error");
}

// ----------------------------------------------------------------------------------------- RLE

// COCO compressed RLE string -> run lengths (pycocotools' rleFrString).
function rleRuns(s) {
  const runs = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

function hexRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// A mask as its crop: a canvas to draw (class colour, opaque outline) and the pixels for hit tests.
function decodeMask(rle, colour) {
  const key = rle.counts + "|" + colour;
  const hit = S.masks.get(key);
  if (hit) return hit;
  const H = rle.size[0];
  const runs = rleRuns(rle.counts);
  let idx = 0, x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1, area = 0;
  for (let i = 0; i < runs.length; i++) {
    const n = runs[i];
    if (i % 2 === 1 && n > 0) {
      const a = idx, b = idx + n - 1, ca = Math.floor(a / H), cb = Math.floor(b / H);
      x0 = Math.min(x0, ca);
      x1 = Math.max(x1, cb);
      if (ca === cb) {
        y0 = Math.min(y0, a % H);
        y1 = Math.max(y1, b % H);
      } else {
        y0 = 0;
        y1 = H - 1;
      }
      area += n;
    }
    idx += n;
  }
  const m = { area, x0: 0, y0: 0, w: 0, h: 0, canvas: null, buf: null };
  if (area > 0) {
    const w = x1 - x0 + 1, h = y1 - y0 + 1;
    const buf = new Uint8Array(w * h);
    idx = 0;
    for (let i = 0; i < runs.length; i++) {
      const n = runs[i];
      if (i % 2 === 1) {
        for (let j = idx; j < idx + n; j++) buf[(j % H - y0) * w + (Math.floor(j / H) - x0)] = 1;
      }
      idx += n;
    }
    const [r, g, b] = hexRgb(colour);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const data = ctx.createImageData(w, h);
    const px = data.data;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const o = y * w + x;
        if (!buf[o]) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !buf[o - 1] || !buf[o + 1] || !buf[o - w] || !buf[o + w];
        px[4 * o] = r;
        px[4 * o + 1] = g;
        px[4 * o + 2] = b;
        px[4 * o + 3] = edge ? 255 : 120;
      }
    }
    ctx.putImageData(data, 0, 0);
    Object.assign(m, { x0, y0, w, h, canvas, buf });
  }
  if (S.masks.size > 2000) S.masks.clear();
  S.masks.set(key, m);
  return m;
}

function colourOf(cls) {
  const i = S.meta.names.indexOf(cls);
  return S.meta.colors[Math.max(0, i) % S.meta.colors.length];
}

// ----------------------------------------------------------------------------------------- queue

async function loadMeta() {
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

function fillFilters() {
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
  for (const id of ["filter-flag", "filter-class", "filter-split", "filter-reviewed"]) {
    $(id).addEventListener("change", () => loadQueue().catch(failed("queue not loaded")));
  }
}

async function loadQueue() {
  const q = new URLSearchParams();
  const pairs = [["flag", "filter-flag"], ["class_name", "filter-class"], ["split", "filter-split"], ["reviewed", "filter-reviewed"]];
  for (const [k, id] of pairs) if ($(id).value) q.set(k, $(id).value);
  S.queue = await api("GET", `/api/images?${q}`);
  renderQueue();
}

function renderQueue() {
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
    for (const f of item.flags.slice(0, 3)) {
      const chip = document.createElement("span");
      chip.className = "flag";
      chip.textContent = f;
      meta.appendChild(chip);
    }
    li.append(name, right, meta);
    li.addEventListener("click", () => openImage(item.id).catch(failed(`${item.file_name} not opened`)));
    ol.appendChild(li);
  }
  $("queue-count").textContent = `${S.queue.length} image${S.queue.length === 1 ? "" : "s"}`;
}

// ----------------------------------------------------------------------------------------- one image

async function openImage(id) {
  if (S.image && S.image.id === id) return;
  if (S.dirty && !(await save(S.reviewed))) return;
  const gen = ++S.gen; // a later openImage wins, whichever answer comes last
  const data = await api("GET", `/api/images/${encodeURIComponent(id)}`);
  if (gen !== S.gen) return;
  const img = new Image();
  img.src = `/api/images/${encodeURIComponent(id)}/image`;
  await img.decode();
  if (gen !== S.gen) return;
  S.image = data;
  S.img = img;
  S.undo = [];
  S.redo = [];
  S.mode = null;
  S.masks.clear();
  setWorking(data);
  fitView();
  $("empty-note").hidden = true;
  renderQueue();
  const li = document.querySelector(`#queue li[data-id="${id}"]`);
  if (li) li.scrollIntoView({ block: "nearest" });
  status(`opened ${data.file_name}`);
}

function setWorking(data) {
  S.image = data;
  S.reviewed = data.reviewed;
  S.inst = data.instances.map((i) => ({
    key: S.nextKey++,
    id: i.id,
    cls: i.class,
    rle: i.rle,
    box: i.box,
    mask_score: i.mask_score,
    confidence: i.confidence,
    flags: i.flags,
    signals: i.signals,
    edited: i.edited,
    points: [],
    candidates: null,
    cand: 0,
    accepted: false,
  }));
  // the first flagged instance, else none
  S.sel = S.inst.findIndex((i) => i.flags.length > 0);
  setDirty(false);
  render();
}

function snapshot() {
  return { inst: S.inst.map((i) => ({ ...i, points: i.points.slice() })), sel: S.sel, reviewed: S.reviewed };
}

function change(fn) {
  S.undo.push(snapshot());
  if (S.undo.length > 200) S.undo.shift();
  S.redo = [];
  fn();
  setDirty(true);
  render();
}

function restore(from, to) {
  if (!from.length) return;
  to.push(snapshot());
  const s = from.pop();
  S.inst = s.inst;
  S.sel = s.sel;
  S.reviewed = s.reviewed;
  S.pending = null;
  setDirty(true);
  render();
}

function setDirty(d) {
  S.dirty = d;
  if (d) status("unsaved changes", "dirty");
}

function selected() {
  return S.sel >= 0 && S.sel < S.inst.length ? S.inst[S.sel] : null;
}

// ----------------------------------------------------------------------------------------- SAM

async function predictFor(key, body) {
  if (S.meta.sam !== "ready") {
    status(`SAM is ${S.meta.sam}${S.meta.sam_error ? ": " + S.meta.sam_error : ""}`, "error");
    return null;
  }
  S.busy++;
  status("SAM ...");
  const gen = S.gen;
  try {
    const t0 = performance.now();
    const res = await api("POST", `/api/images/${S.image.id}/predict`, body);
    if (gen !== S.gen) return null; // another image was opened meanwhile: the answer is not for it
    status(`SAM ${Math.round(performance.now() - t0)} ms (server ${Math.round(res.seconds * 1000)} ms)`, S.dirty ? "dirty" : "");
    return res;
  } catch (e) {
    status(`SAM: ${e.message}`, "error");
    return null;
  } finally {
    S.busy--;
  }
}

function applyPrediction(inst, res) {
  inst.rle = res.rle;
  inst.mask_score = res.mask_score;
  inst.candidates = res.candidates;
  inst.cand = res.chosen;
  inst.edited = true;
  inst.flags = [];
  inst.signals = {};
  inst.accepted = false;
}

// Re-decode the selected instance from its box, clicks and current mask; one request in flight per instance.
async function refine(inst) {
  if (S.pending && S.pending.key === inst.key) {
    S.pending.again = true;
    return;
  }
  S.pending = { key: inst.key, again: false };
  for (;;) {
    const live = S.inst.find((i) => i.key === inst.key);
    if (!live) break;
    const body = { box: live.box, points: live.points, mask: live.rle };
    const res = await predictFor(live.key, body);
    const now = S.inst.find((i) => i.key === inst.key);
    if (res && now && S.pending && now.points.length === body.points.length) {
      applyPrediction(now, res);
      render();
    }
    if (!S.pending || !S.pending.again) break;
    S.pending.again = false;
  }
  S.pending = null;
}

function addPoint(x, y, label) {
  const inst = selected();
  if (!inst) return;
  change(() => inst.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, label]));
  refine(inst);
}

async function boxDrawn(box) {
  const mode = S.mode;
  setMode(null);
  if (mode === "box") {
    const inst = selected();
    if (!inst) return;
    change(() => {
      inst.box = box;
      inst.points = [];
    });
    const res = await predictFor(inst.key, { box });
    const live = S.inst.find((i) => i.key === inst.key);
    if (res && live && live.box === box) {
      applyPrediction(live, res);
      render();
    }
  } else if (mode === "new") {
    setDirty(true); // the edit starts now: leaving the image waits for it (save refuses while SAM works)
    const res = await predictFor(null, { box });
    if (!res) return;
    if (rleArea(res.rle) === 0) {
      status("SAM found nothing in that box", "error");
      return;
    }
    change(() => {
      const inst = {
        key: S.nextKey++, id: null, cls: $("new-class").value, rle: null, box, mask_score: null, confidence: null,
        flags: [], signals: {}, edited: true, points: [], candidates: null, cand: 0, accepted: false,
      };
      applyPrediction(inst, res);
      S.inst.push(inst);
      S.sel = S.inst.length - 1;
    });
  }
}

function rleArea(rle) {
  return rleRuns(rle.counts).reduce((sum, n, i) => sum + (i % 2 ? n : 0), 0);
}

// ----------------------------------------------------------------------------------------- actions

const actions = {
  accept() {
    const inst = selected();
    if (!inst) return;
    inst.accepted = true; // a reading aid only: not saved, not undone
    const order = S.inst.map((_, k) => (S.sel + 1 + k) % S.inst.length);
    const next = order.find((k) => !S.inst[k].accepted && S.inst[k].flags.length) ?? order.find((k) => !S.inst[k].accepted);
    S.sel = next === undefined ? -1 : next;
    render();
  },
  delete() {
    if (!selected()) return;
    change(() => {
      S.inst.splice(S.sel, 1);
      S.sel = Math.min(S.sel, S.inst.length - 1);
    });
  },
  candidate() {
    const inst = selected();
    if (!inst || !inst.candidates || inst.candidates.length < 2) {
      status("no other candidate: click to ask SAM for some");
      return;
    }
    pickCandidate((inst.cand + 1) % inst.candidates.length);
  },
  redraw() {
    if (selected()) setMode("box");
  },
  new() {
    setMode("new");
  },
  undo() {
    restore(S.undo, S.redo);
  },
  redo() {
    restore(S.redo, S.undo);
  },
  async save() {
    await save(S.reviewed);
  },
  async reviewed() {
    if (!S.image) return;
    const current = S.image.id;
    const at = S.queue.findIndex((q) => q.id === current);
    const later = [...S.queue.slice(at + 1), ...S.queue.slice(0, Math.max(at, 0))];
    const next = later.find((q) => !q.reviewed);
    if (!(await save(true))) return;
    if (next) await openImage(next.id).catch(failed(`${next.file_name} not opened`));
    else status("all images in this queue are reviewed");
  },
  clearPoints() {
    const inst = selected();
    if (inst && inst.points.length) change(() => (inst.points = []));
  },
};

function pickCandidate(k) {
  const inst = selected();
  if (!inst || !inst.candidates || !inst.candidates[k]) return;
  change(() => {
    inst.cand = k;
    inst.rle = inst.candidates[k].rle;
    inst.mask_score = inst.candidates[k].mask_score;
  });
}

function setClass(name) {
  const inst = selected();
  if (!inst || inst.cls === name) return;
  change(() => {
    inst.cls = name;
    inst.edited = true;
  });
}

async function save(reviewed) {
  if (!S.image || S.saving) return false;
  if (S.busy) {
    status("wait for SAM to answer, then save", "error");
    return false;
  }
  S.saving = true;
  const body = {
    version: S.image.version,
    reviewed,
    instances: S.inst.map((i) => ({ id: i.id, class: i.cls, rle: i.rle, box: i.box })),
  };
  try {
    await api("PUT", `/api/images/${S.image.id}`, body);
    const undo = S.undo, redo = S.redo, sel = S.sel;
    const fresh = await api("GET", `/api/images/${S.image.id}`);
    setWorking(fresh);
    S.undo = undo;
    S.redo = redo;
    S.sel = Math.min(sel, S.inst.length - 1);
    status(`saved ${fresh.file_name} (version ${fresh.version})${reviewed ? ", reviewed" : ""}`);
    await Promise.all([loadMeta(), loadQueue()]).catch(failed("saved, but the queue was not refreshed"));
    render();
    return true;
  } catch (e) {
    if (e.status === 409) {
      status(`not saved: ${S.image.file_name} was saved elsewhere (version ${e.data.version}); reopen it to see that version`, "error");
    } else {
      status(`not saved: ${e.message}`, "error");
    }
    return false;
  } finally {
    S.saving = false;
  }
}

function setMode(mode) {
  S.mode = mode;
  const banner = $("mode-banner");
  banner.hidden = !mode;
  banner.textContent = mode === "box" ? "Drag the new box (Esc: cancel)" : mode === "new" ? `Drag a box around the missed ${$("new-class").value} (Esc: cancel)` : "";
}

// ----------------------------------------------------------------------------------------- drawing

function fitView() {
  const canvas = $("canvas");
  const r = canvas.getBoundingClientRect();
  if (!S.img) return;
  const s = Math.min(r.width / S.img.naturalWidth, r.height / S.img.naturalHeight) * 0.96;
  S.view = { s, ox: (r.width - S.img.naturalWidth * s) / 2, oy: (r.height - S.img.naturalHeight * s) / 2 };
  render();
}

function toImage(ev) {
  const r = $("canvas").getBoundingClientRect();
  return [(ev.clientX - r.left - S.view.ox) / S.view.s, (ev.clientY - r.top - S.view.oy) / S.view.s];
}

function render() {
  renderCanvas();
  renderSide();
}

function renderCanvas() {
  const canvas = $("canvas");
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(r.width * dpr) || canvas.height !== Math.round(r.height * dpr)) {
    canvas.width = Math.round(r.width * dpr);
    canvas.height = Math.round(r.height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!S.img) return;
  const { s, ox, oy } = S.view;
  ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * ox, dpr * oy);
  ctx.imageSmoothingEnabled = s < 1;
  ctx.drawImage(S.img, 0, 0);
  const sel = selected();
  if (!S.hide) {
    S.inst.forEach((inst, k) => {
      if (!inst.rle) return;
      const m = decodeMask(inst.rle, colourOf(inst.cls));
      if (!m.canvas) return;
      ctx.globalAlpha = sel ? (k === S.sel ? 0.95 : 0.5) : 0.8;
      ctx.drawImage(m.canvas, m.x0, m.y0);
    });
    ctx.globalAlpha = 1;
  }
  const px = 1 / s; // one screen pixel in image units
  S.inst.forEach((inst, k) => {
    const [x1, y1, x2, y2] = inst.box;
    ctx.strokeStyle = colourOf(inst.cls);
    ctx.lineWidth = (k === S.sel ? 2 : 1) * px;
    ctx.setLineDash(k === S.sel ? [] : [4 * px, 3 * px]);
    ctx.globalAlpha = sel && k !== S.sel ? 0.5 : 1;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  });
  ctx.setLineDash([]);
  ctx.globalAlpha = 1;
  if (sel) {
    for (const [x, y, l] of sel.points) {
      ctx.beginPath();
      ctx.arc(x, y, 5 * px, 0, 2 * Math.PI);
      ctx.fillStyle = l ? "#3fb971" : "#e5534b";
      ctx.fill();
      ctx.lineWidth = 1.5 * px;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }
  if (S.drag && S.drag.kind === "box") {
    const [ax, ay] = S.drag.start, [bx, by] = S.drag.end;
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 1.5 * px;
    ctx.setLineDash([6 * px, 4 * px]);
    ctx.strokeRect(Math.min(ax, bx), Math.min(ay, by), Math.abs(bx - ax), Math.abs(by - ay));
    ctx.setLineDash([]);
  }
}

function fmt(v) {
  return v === null || v === undefined ? "\u2013" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v);
}

function appendFlagChips(parent, flags) {
  for (const f of flags) {
    const chip = document.createElement("span");
    chip.className = "flag";
    chip.textContent = f;
    parent.appendChild(chip);
  }
}

function renderSide() {
  const info = $("image-info");
  info.textContent = "";
  if (S.image) {
    const b = document.createElement("b");
    b.textContent = S.image.file_name;
    info.append(b, ` \u00b7 ${S.image.split} \u00b7 ${S.image.width}\u00d7${S.image.height} \u00b7 version ${S.image.version}`);
    info.append(S.reviewed ? " \u00b7 \u2713 reviewed" : " \u00b7 not reviewed");
  }
  const ol = $("instances");
  ol.textContent = "";
  S.inst.forEach((inst, k) => {
    const li = document.createElement("li");
    if (k === S.sel) li.classList.add("selected");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colourOf(inst.cls);
    const name = document.createElement("span");
    name.textContent = `${inst.cls}${inst.id === null ? " (new)" : ` #${inst.id}`}${inst.edited ? " \u270e" : ""}`;
    const right = document.createElement("span");
    right.className = "right";
    right.textContent = fmt(inst.mask_score);
    if (inst.accepted) {
      const ok = document.createElement("span");
      ok.className = "ok";
      ok.textContent = "\u2713";
      right.appendChild(ok);
    }
    li.append(sw, name, right);
    if (inst.flags.length) {
      const flags = document.createElement("span");
      flags.className = "flags";
      appendFlagChips(flags, inst.flags);
      li.appendChild(flags);
    }
    li.addEventListener("click", () => {
      S.sel = k;
      render();
    });
    ol.appendChild(li);
  });
  $("instance-count").textContent = S.image ? `(${S.inst.length})` : "";
  const inst = selected();
  $("selected").hidden = !inst;
  if (!inst) return;
  $("sel-title").textContent = inst.id === null ? "(new)" : `#${inst.id}`;
  $("sel-class").value = inst.cls;
  const flags = $("sel-flags");
  flags.textContent = "";
  appendFlagChips(flags, inst.flags);
  if (!inst.flags.length) flags.textContent = inst.edited ? "edited: flags are recomputed on save" : "no flags";
  const table = $("sel-scores");
  table.textContent = "";
  const rows = [["mask score", inst.mask_score], ["confidence", inst.confidence], ...Object.entries(inst.signals)];
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k.replace(/_/g, " ");
    tr.insertCell().textContent = fmt(v);
  }
  const cands = $("candidates");
  cands.textContent = "";
  (inst.candidates || []).forEach((c, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `mask ${k + 1}: ${fmt(c.mask_score)}`;
    if (k === inst.cand) b.classList.add("chosen");
    b.addEventListener("click", () => pickCandidate(k));
    cands.appendChild(b);
  });
  const pos = inst.points.filter((p) => p[2] === 1).length;
  $("sel-points").textContent = inst.points.length ? `${pos} positive, ${inst.points.length - pos} negative click(s)` : "";
}

// ----------------------------------------------------------------------------------------- input

function hitTest(x, y) {
  let best = -1, bestArea = Infinity;
  S.inst.forEach((inst, k) => {
    if (!inst.rle) return;
    const m = decodeMask(inst.rle, colourOf(inst.cls));
    const cx = Math.floor(x) - m.x0, cy = Math.floor(y) - m.y0;
    if (m.buf && cx >= 0 && cy >= 0 && cx < m.w && cy < m.h && m.buf[cy * m.w + cx] && m.area < bestArea) {
      best = k;
      bestArea = m.area;
    }
  });
  if (best < 0) {
    S.inst.forEach((inst, k) => {
      const [x1, y1, x2, y2] = inst.box;
      const a = (x2 - x1) * (y2 - y1);
      if (x >= x1 && x <= x2 && y >= y1 && y <= y2 && a < bestArea) {
        best = k;
        bestArea = a;
      }
    });
  }
  return best;
}

function setupCanvas() {
  const canvas = $("canvas");
  let space = false;
  window.addEventListener("keydown", (e) => {
    if (e.code === "Space" && !inForm(e)) {
      space = true;
      canvas.classList.add("panning");
      e.preventDefault();
    }
  });
  window.addEventListener("keyup", (e) => {
    if (e.code === "Space") {
      space = false;
      canvas.classList.remove("panning");
    }
  });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => {
    if (!S.img) return;
    canvas.focus();
    const p = toImage(e);
    if (space || e.button === 1) {
      S.drag = { kind: "pan", x: e.clientX, y: e.clientY, ox: S.view.ox, oy: S.view.oy };
    } else if (S.mode && e.button === 0) {
      S.drag = { kind: "box", start: p, end: p };
    } else {
      S.drag = { kind: "click", start: p, button: e.button, shift: e.shiftKey, alt: e.altKey };
    }
  });
  window.addEventListener("mousemove", (e) => {
    if (!S.drag) return;
    if (S.drag.kind === "pan") {
      S.view.ox = S.drag.ox + e.clientX - S.drag.x;
      S.view.oy = S.drag.oy + e.clientY - S.drag.y;
      renderCanvas();
    } else if (S.drag.kind === "box") {
      S.drag.end = toImage(e);
      renderCanvas();
    }
  });
  window.addEventListener("mouseup", (e) => {
    const d = S.drag;
    S.drag = null;
    if (!d) return;
    if (d.kind === "box") {
      const [ax, ay] = d.start, [bx, by] = toImage(e);
      const W = S.img.naturalWidth, H = S.img.naturalHeight;
      const box = [Math.max(0, Math.min(ax, bx)), Math.max(0, Math.min(ay, by)), Math.min(W, Math.max(ax, bx)), Math.min(H, Math.max(ay, by))];
      renderCanvas();
      if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) boxDrawn(box.map((v) => Math.round(v * 10) / 10));
      else status("box too small: drag from one corner to the other");
    } else if (d.kind === "click") {
      const [x, y] = d.start;
      if (x < 0 || y < 0 || x >= S.img.naturalWidth || y >= S.img.naturalHeight) return;
      if (d.alt || !selected()) {
        const k = hitTest(x, y);
        S.sel = k;
        render();
      } else {
        addPoint(x, y, d.button === 2 || d.shift ? 0 : 1);
      }
    }
  });
  canvas.addEventListener(
    "wheel",
    (e) => {
      if (!S.img) return;
      e.preventDefault();
      const r = canvas.getBoundingClientRect();
      const mx = e.clientX - r.left, my = e.clientY - r.top;
      const f = Math.exp(-e.deltaY * 0.0015);
      const s = Math.min(Math.max(S.view.s * f, 0.02), 40);
      S.view.ox = mx - ((mx - S.view.ox) * s) / S.view.s;
      S.view.oy = my - ((my - S.view.oy) * s) / S.view.s;
      S.view.s = s;
      renderCanvas();
    },
    { passive: false },
  );
  window.addEventListener("resize", () => fitView());
}

function inForm(e) {
  const t = e.target;
  return t && (t.tagName === "SELECT" || t.tagName === "INPUT" || t.tagName === "TEXTAREA");
}

function setupKeys() {
  window.addEventListener("keydown", (e) => {
    if ($("help").open) return;
    if (inForm(e)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    const ctrl = e.ctrlKey || e.metaKey;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    let handled = true;
    if (ctrl && key === "z") (e.shiftKey ? actions.redo : actions.undo)();
    else if (ctrl && key === "y") actions.redo();
    else if (ctrl && key === "s") actions.save();
    else if (ctrl || e.altKey) handled = false;
    else if (key === "a") actions.accept();
    else if (key === "d" || key === "Delete" || key === "Backspace") actions.delete();
    else if (key === "m") actions.candidate();
    else if (key === "b") actions.redraw();
    else if (key === "n") actions.new();
    else if (key === "x") actions.clearPoints();
    else if (key === "z") actions.undo();
    else if (key === "y") actions.redo();
    else if (key === "s") actions.save();
    else if (key === "Enter") actions.reviewed();
    else if (key === "h") {
      S.hide = !S.hide;
      renderCanvas();
    } else if (key === "f") fitView();
    else if (key === "c") $("sel-class").focus();
    else if (key === "?") $("help").showModal();
    else if (key === "Escape") {
      setMode(null);
      S.sel = -1;
      render();
    } else if (key === "Tab") {
      if (S.inst.length) {
        const n = S.inst.length;
        S.sel = e.shiftKey ? (S.sel <= 0 ? n - 1 : S.sel - 1) : (S.sel + 1) % n;
        render();
      }
    } else if (key === "ArrowRight" || key === "ArrowLeft") {
      const at = S.queue.findIndex((q) => S.image && q.id === S.image.id);
      const next = S.queue[at + (key === "ArrowRight" ? 1 : -1)];
      if (next) openImage(next.id).catch(failed(`${next.file_name} not opened`));
    } else if (/^[1-9]$/.test(key) && S.meta && +key <= S.meta.names.length) setClass(S.meta.names[+key - 1]);
    else handled = false;
    if (handled) e.preventDefault();
  });
  $("sel-class").addEventListener("change", (e) => {
    setClass(e.target.value);
    e.target.blur();
  });
  $("new-class").addEventListener("change", (e) => e.target.blur());
  for (const b of document.querySelectorAll("[data-action]")) {
    b.addEventListener("click", () => {
      b.blur(); // a focused button would take the next Enter or Space as a click too
      actions[b.dataset.action]();
    });
  }
  $("help-button").addEventListener("click", () => $("help").showModal());
  window.addEventListener("beforeunload", (e) => {
    if (S.dirty) e.preventDefault();
  });
}

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
