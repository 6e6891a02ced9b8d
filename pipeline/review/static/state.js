// samlabel review, the page's shared state: what is open, the working copy of its instances, the view,
// and the status line. One object (S) that every module reads and changes; nothing here draws.

export const $ = (id) => document.getElementById(id);

export const S = {
  meta: null,
  queue: [],
  image: null, // GET /api/images/{id}
  inst: [], // working copy: {key, id, cls, rle, box, mask_score, confidence, flags, signals, edited, points, candidates, cand, accepted}
  reviewed: false,
  sel: -1,
  props: [], // the proposals still waiting (no class yet): {key, id, rle, box, mask_score, signals}
  psel: -1, // the selected proposal (an instance and a proposal are never selected together)
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

export function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
}

// A failed request the user did not start by hand (polling, the queue, opening an image): said, not swallowed.
export function failed(what) {
  return (e) => status(`${what}: ${e.message}`, "error");
}

export function selected() {
  return S.sel >= 0 && S.sel < S.inst.length ? S.inst[S.sel] : null;
}

export function inForm(e) {
  const t = e.target;
  return t && (t.tagName === "SELECT" || t.tagName === "INPUT" || t.tagName === "TEXTAREA");
}

export function selectedProposal() {
  return S.psel >= 0 && S.psel < S.props.length ? S.props[S.psel] : null;
}
