// samlabel review: what the user does to the open image (SAM clicks and boxes, class, delete, undo and redo,
// save) and the keys that do it. Undo and redo live here: the server keeps no edit history, each save
// replaces the image's state.

import { api } from "./api.js";
import { $, S, failed, inForm, selected, selectedProposal, status } from "./state.js";
import { rleArea } from "./rle.js";
import { fitView, render, renderCanvas } from "./canvas.js";
import { loadMeta, loadQueue, renderQueue } from "./queue.js";

export async function openImage(id) {
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
    source: i.source,
    proposal: null,
    points: [],
    candidates: null,
    cand: 0,
    accepted: false,
  }));
  S.props = (data.proposals || []).map((p) => ({ ...p, key: S.nextKey++ }));
  // the first flagged instance, else none
  S.sel = S.inst.findIndex((i) => i.flags.length > 0);
  S.psel = -1;
  setDirty(false);
  render();
}

function snapshot() {
  const inst = S.inst.map((i) => ({ ...i, points: i.points.slice() }));
  return { inst, sel: S.sel, reviewed: S.reviewed, props: S.props.slice(), psel: S.psel };
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
  S.props = s.props;
  S.psel = s.psel;
  S.pending = null;
  setDirty(true);
  render();
}

function setDirty(d) {
  S.dirty = d;
  if (d) status("unsaved changes", "dirty");
}

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

export function addPoint(x, y, label) {
  const inst = selected();
  if (!inst) return;
  change(() => inst.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, label]));
  refine(inst);
}

export async function boxDrawn(box) {
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
        flags: [], signals: {}, edited: true, source: null, proposal: null, points: [], candidates: null, cand: 0,
        accepted: false,
      };
      applyPrediction(inst, res);
      S.inst.push(inst);
      S.sel = S.inst.length - 1;
    });
  }
}

export const actions = {
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
  // Proposals (masks no instance accounts for): select the next one, accept it as a class, or dismiss it.
  nextProposal() {
    if (!S.props.length) {
      status("no proposals left in this image");
      return;
    }
    S.psel = (S.psel + 1) % S.props.length;
    S.sel = -1;
    render();
  },
  acceptProposal(cls) {
    const p = selectedProposal();
    if (!p) return;
    change(() => {
      S.props.splice(S.psel, 1);
      S.inst.push({
        key: S.nextKey++, id: null, cls: cls || $("new-class").value, rle: p.rle, box: p.box, mask_score: p.mask_score,
        confidence: null, flags: [], signals: p.signals, edited: false, source: "proposal", proposal: p.id, points: [],
        candidates: null, cand: 0, accepted: false,
      });
      nextAfterProposal();
    });
  },
  dismissProposal() {
    if (!selectedProposal()) return;
    change(() => {
      S.props.splice(S.psel, 1);
      nextAfterProposal();
    });
  },
};

// After a proposal is accepted or dismissed: the next one stays selected, so keys go through them in turn.
function nextAfterProposal() {
  S.psel = S.props.length ? Math.min(S.psel, S.props.length - 1) : -1;
  if (S.psel >= 0) S.sel = -1;
}

export function pickCandidate(k) {
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
    instances: S.inst.map((i) => ({ id: i.id, class: i.cls, rle: i.rle, box: i.box, ...(i.proposal === null ? {} : { proposal: i.proposal }) })),
    proposals: S.props.map((p) => p.id),
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

export function setupKeys() {
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
    else if (key === "a" && selectedProposal()) actions.acceptProposal($("new-class").value);
    else if ((key === "d" || key === "Delete" || key === "Backspace") && selectedProposal()) actions.dismissProposal();
    else if (key === "p") actions.nextProposal();
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
      S.psel = -1;
      render();
    } else if (key === "Tab") {
      if (S.inst.length) {
        const n = S.inst.length;
        S.sel = e.shiftKey ? (S.sel <= 0 ? n - 1 : S.sel - 1) : (S.sel + 1) % n;
        S.psel = -1;
        render();
      }
    } else if (key === "ArrowRight" || key === "ArrowLeft") {
      const at = S.queue.findIndex((q) => S.image && q.id === S.image.id);
      const next = S.queue[at + (key === "ArrowRight" ? 1 : -1)];
      if (next) openImage(next.id).catch(failed(`${next.file_name} not opened`));
    } else if (/^[1-9]$/.test(key) && S.meta && +key <= S.meta.names.length) {
      if (selectedProposal()) actions.acceptProposal(S.meta.names[+key - 1]);
      else setClass(S.meta.names[+key - 1]);
    }
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
