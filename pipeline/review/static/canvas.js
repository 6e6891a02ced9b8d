// samlabel review: drawing (the image, its masks, boxes and clicks; the side panel) and the mouse on the canvas.

import { $, S, inForm, selected, selectedProposal, status } from "./state.js";
import { decodeMask, maskOutline } from "./rle.js";
import { addPoint, boxDrawn, pickCandidate } from "./actions.js";

// The colour of proposals (no class yet): their dashed outline and their "unlabeled" tag.
export const PROPOSAL_COLOUR = "#f5f5f5";
const PROPOSAL_SELECTED = "#ffd84d";

export function colourOf(cls) {
  const i = S.meta.names.indexOf(cls);
  return S.meta.colors[Math.max(0, i) % S.meta.colors.length];
}

export function fitView() {
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

export function render() {
  renderCanvas();
  renderSide();
}

export function renderCanvas() {
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
      const m = decodeMask(inst.rle, colourOf(inst.cls), S.masks);
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
  if (!S.hide) drawProposals(ctx, px);
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

// Proposals: a layer of their own, each mask's outline dashed and tagged "unlabeled" (the selected one in yellow,
// its mask faintly filled).
function drawProposals(ctx, px) {
  const psel = selectedProposal();
  S.props.forEach((p) => {
    const m = decodeMask(p.rle, PROPOSAL_COLOUR, S.masks);
    if (!m.buf) return;
    const chosen = p === psel;
    if (chosen) {
      ctx.globalAlpha = 0.35;
      ctx.drawImage(m.canvas, m.x0, m.y0);
      ctx.globalAlpha = 1;
    }
    ctx.beginPath();
    for (const loop of maskOutline(m)) {
      ctx.moveTo(...loop[0]);
      for (let i = 1; i < loop.length; i++) ctx.lineTo(...loop[i]);
      ctx.closePath();
    }
    ctx.lineWidth = (chosen ? 3 : 2) * px;
    ctx.setLineDash([6 * px, 5 * px]);
    ctx.strokeStyle = "rgba(0, 0, 0, 0.6)"; // a dark underlay: the dashes read on light images too
    ctx.lineDashOffset = 0;
    ctx.stroke();
    ctx.strokeStyle = chosen ? PROPOSAL_SELECTED : PROPOSAL_COLOUR;
    ctx.lineDashOffset = 5.5 * px;
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.lineDashOffset = 0;
    const label = `unlabeled #${p.id}`;
    ctx.font = `${11 * px}px system-ui, sans-serif`;
    const tw = ctx.measureText(label).width;
    const [bx, by] = p.box;
    const ty = by - 14 * px >= 0 ? by - 14 * px : by;
    ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
    ctx.fillRect(bx, ty, tw + 6 * px, 14 * px);
    ctx.fillStyle = chosen ? PROPOSAL_SELECTED : PROPOSAL_COLOUR;
    ctx.fillText(label, bx + 3 * px, ty + 11 * px);
  });
}

function fmt(v) {
  return v === null || v === undefined ? "\u2013" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v);
}

export function appendFlagChips(parent, flags) {
  for (const f of flags) {
    const chip = document.createElement("span");
    chip.className = "flag";
    chip.textContent = f;
    chip.title = S.meta.flag_meanings[f] || ""; // what the flag means (pipeline.quality.FLAG_MEANINGS)
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
    if (inst.source === "proposal") name.title = "an accepted proposal (source: proposal)";
    if (inst.source === "proposal") name.textContent += " \u00b7 proposal";
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
  renderProposals();
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

function renderProposals() {
  const ol = $("proposals");
  ol.textContent = "";
  S.props.forEach((p, k) => {
    const li = document.createElement("li");
    if (k === S.psel) li.classList.add("selected");
    const name = document.createElement("span");
    name.textContent = `unlabeled #${p.id}`;
    const right = document.createElement("span");
    right.className = "right";
    right.textContent = fmt(p.mask_score);
    li.append(name, right);
    li.addEventListener("click", () => {
      S.psel = k;
      S.sel = -1;
      render();
    });
    ol.appendChild(li);
  });
  $("proposal-count").textContent = S.image ? `(${S.props.length})` : "";
  $("proposals-panel").hidden = !S.image || (!S.props.length && !S.inst.some((i) => i.source === "proposal"));
  const p = selectedProposal();
  $("proposal-actions").hidden = !p;
  if (p) $("proposal-class").textContent = $("new-class").value;
}

// The smallest proposal whose mask covers (x, y), or -1.
function hitProposal(x, y) {
  let best = -1, bestArea = Infinity;
  S.props.forEach((p, k) => {
    const m = decodeMask(p.rle, PROPOSAL_COLOUR, S.masks);
    const cx = Math.floor(x) - m.x0, cy = Math.floor(y) - m.y0;
    if (m.buf && cx >= 0 && cy >= 0 && cx < m.w && cy < m.h && m.buf[cy * m.w + cx] && m.area < bestArea) {
      best = k;
      bestArea = m.area;
    }
  });
  return best;
}

// The smallest instance whose mask covers (x, y); else (with `boxes`) the smallest whose box does; else -1.
function hitTest(x, y, boxes = true) {
  let best = -1, bestArea = Infinity;
  S.inst.forEach((inst, k) => {
    if (!inst.rle) return;
    const m = decodeMask(inst.rle, colourOf(inst.cls), S.masks);
    const cx = Math.floor(x) - m.x0, cy = Math.floor(y) - m.y0;
    if (m.buf && cx >= 0 && cy >= 0 && cx < m.w && cy < m.h && m.buf[cy * m.w + cx] && m.area < bestArea) {
      best = k;
      bestArea = m.area;
    }
  });
  if (best < 0 && boxes) {
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

export function setupCanvas() {
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
        // a mask under the cursor, an instance's or a proposal's; else an instance's box
        const k = hitTest(x, y, false);
        S.psel = k < 0 ? hitProposal(x, y) : -1;
        S.sel = k < 0 && S.psel < 0 ? hitTest(x, y) : k;
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
