// samlabel review: COCO compressed RLE (the API's mask format: column-major runs starting with background)
// decoded in the page, for drawing and hit tests. No state of its own besides the cache it is given.

// COCO compressed RLE string -> run lengths (pycocotools' rleFrString).
export function rleRuns(s) {
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

export function rleArea(rle) {
  return rleRuns(rle.counts).reduce((sum, n, i) => sum + (i % 2 ? n : 0), 0);
}

function hexRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// A mask as its crop: a canvas to draw (class colour, opaque outline) and the pixels for hit tests;
// decoded once per (counts, colour) and kept in `cache` (a Map).
export function decodeMask(rle, colour, cache) {
  const key = rle.counts + "|" + colour;
  const hit = cache.get(key);
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
  if (cache.size > 2000) cache.clear();
  cache.set(key, m);
  return m;
}

// The outline of a decoded mask (decodeMask's result): closed loops of pixel corners [x, y] in image pixels,
// one per boundary (outer or hole), each traced along the pixel edges with the mask on its right, so a dashed
// stroke runs on along a whole loop. Computed once per mask (kept on it).
export function maskOutline(m) {
  if (m.outline) return m.outline;
  const loops = [];
  const { buf, w, h, x0, y0 } = m;
  if (buf) {
    const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && buf[y * w + x] === 1;
    const W = w + 1; // corners per row
    const next = new Map(); // corner -> corners it leads to (each boundary edge once, clockwise round its pixel)
    const add = (ax, ay, bx, by) => {
      const k = ay * W + ax;
      if (!next.has(k)) next.set(k, []);
      next.get(k).push(by * W + bx);
    };
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (!on(x, y)) continue;
        if (!on(x, y - 1)) add(x, y, x + 1, y);
        if (!on(x + 1, y)) add(x + 1, y, x + 1, y + 1);
        if (!on(x, y + 1)) add(x + 1, y + 1, x, y + 1);
        if (!on(x - 1, y)) add(x, y + 1, x, y);
      }
    }
    for (const start of next.keys()) {
      while (next.get(start).length) {
        const loop = [];
        let k = start;
        do {
          loop.push([x0 + (k % W), y0 + Math.floor(k / W)]);
          k = next.get(k).pop();
        } while (k !== start && next.has(k) && next.get(k).length);
        loops.push(loop);
      }
    }
  }
  m.outline = loops;
  return loops;
}
