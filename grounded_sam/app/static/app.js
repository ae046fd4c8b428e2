// grounded-sam annotation app: plain browser JavaScript, no build step.
// Talks to the JSON API documented in docs/app.md; every edit is saved by the server
// before it is answered, so the page holds no unsaved state except the mask being drawn
// and text-prompt proposals not accepted yet.
"use strict";

(() => {
  // ------------------------------------------------------------------ API
  const params = new URLSearchParams(location.search);
  const TOKEN = params.get("token") || sessionStorage.getItem("grounded-sam-token") || "";
  if (params.get("token")) sessionStorage.setItem("grounded-sam-token", TOKEN);

  async function api(method, path, body) {
    const opts = { method, headers: {} };
    if (TOKEN) opts.headers["X-Grounded-SAM-Token"] = TOKEN;
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    startBusy();
    try {
      const r = await fetch("api/" + path, opts);
      let data = null;
      try { data = await r.json(); } catch (e) { /* not JSON */ }
      if (!r.ok) {
        const err = new Error((data && data.error) || `HTTP ${r.status}`);
        err.status = r.status;
        throw err;
      }
      return data;
    } finally {
      stopBusy();
    }
  }

  async function fetchImage(id) {
    const headers = TOKEN ? { "X-Grounded-SAM-Token": TOKEN } : {};
    const r = await fetch(`api/images/${id}/file`, { headers });
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error || msg; } catch (e) { /* keep */ }
      throw new Error(msg);
    }
    return createImageBitmap(await r.blob());
  }

  // ------------------------------------------------------------------ masks
  // COCO compressed RLE (pycocotools' rleFrString) -> run lengths
  function rleCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++; k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // (H*W) Uint8Array in column-major order (COCO's): pixel (x, y) is m[x * H + y]
  function decodeRLE(seg) {
    const [h, w] = seg.size;
    const counts = typeof seg.counts === "string" ? rleCounts(seg.counts) : seg.counts;
    const m = new Uint8Array(h * w);
    let i = 0, v = 0;
    for (const c of counts) {
      if (v) m.fill(1, i, i + c);
      i += c;
      v ^= 1;
    }
    return m;
  }

  const PALETTE = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [127, 127, 127],
  ];
  const DRAFT_RGB = [0, 229, 255];
  const NONE_RGB = [200, 200, 200];
  function catColor(cid) {
    return cid == null ? NONE_RGB : PALETTE[(cid - 1) % PALETTE.length];
  }
  const css = (rgb, a = 1) => `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a})`;

  // an image-sized canvas: the mask filled at fillAlpha, its 1-pixel border opaque
  function maskCanvas(item, rgb, fillAlpha) {
    const seg = item.segmentation;
    const [h, w] = seg.size;
    if (!item._m) item._m = decodeRLE(seg);
    const m = item._m;
    const cv = document.createElement("canvas");
    cv.width = w; cv.height = h;
    const ctx = cv.getContext("2d");
    const img = ctx.createImageData(w, h);
    const d = img.data;
    const fa = Math.round(fillAlpha * 255);
    for (let x = 0; x < w; x++) {
      const col = x * h;
      for (let y = 0; y < h; y++) {
        if (!m[col + y]) continue;
        const edge = y === 0 || y === h - 1 || x === 0 || x === w - 1 ||
          !m[col + y - 1] || !m[col + y + 1] || !m[col - h + y] || !m[col + h + y];
        const o = (y * w + x) * 4;
        d[o] = rgb[0]; d[o + 1] = rgb[1]; d[o + 2] = rgb[2];
        d[o + 3] = edge ? 255 : fa;
      }
    }
    ctx.putImageData(img, 0, 0);
    return cv;
  }

  // ------------------------------------------------------------------ state
  const S = {
    info: null,
    categories: [],
    images: [],
    filter: "all",
    current: null,
    detail: null,
    img: null,
    W: 0, H: 0,
    anns: [],
    proposals: [],
    candidates: [],
    proposalsByImage: new Map(),
    selected: null, // {kind: "draft" | "ann" | "proposal" | "candidate", id}
    draft: null, // {points, box, logits, mask, history}
    classId: null,
    undo: [],
    view: { scale: 1, ox: 0, oy: 0, fit: true },
    revision: null,
    chain: Promise.resolve(),
    clickMs: [], // the last 200 clicks: request sent -> mask drawn, in ms (benchmarks/app.py)
    nextPid: 1,
    busy: 0,
  };

  const $ = (id) => document.getElementById(id);
  const stage = $("stage");
  const ctx = stage.getContext("2d");

  let busyTimer = null;
  function startBusy() {
    S.busy++;
    if (!busyTimer) busyTimer = setTimeout(() => { $("busy").hidden = S.busy === 0; }, 250);
  }
  function stopBusy() {
    S.busy = Math.max(0, S.busy - 1);
    if (S.busy === 0) {
      clearTimeout(busyTimer); busyTimer = null;
      $("busy").hidden = true;
    }
  }

  function setStatus(text, kind = "") {
    const el = $("status");
    el.textContent = text;
    el.className = "status " + kind;
    el.title = text;
  }
  function showError(e) {
    setStatus(e.message || String(e), "error");
    console.warn(e);
  }

  function catName(cid) {
    const c = S.categories.find((c) => c.id === cid);
    return c ? c.name : "unnamed";
  }

  // ------------------------------------------------------------------ loading
  async function loadInfo() {
    S.info = await api("GET", "info");
    S.categories = S.info.categories;
    S.revision = S.info.revision;
    $("dataset-name").textContent = S.info.dataset.name;
    const m = S.info.model;
    $("model-info").textContent = `${m.sam} · ${m.detector}` + (m.text_prompts ? "" : " (text prompts off)");
    $("model-info").title = m.detector_error || "";
    const sel = $("class-select");
    sel.innerHTML = "";
    for (const c of S.categories) {
      const o = document.createElement("option");
      o.value = c.id;
      o.textContent = `${c.id <= 9 ? c.id + " · " : ""}${c.name}`;
      sel.appendChild(o);
    }
    if (S.classId == null && S.categories.length) S.classId = S.categories[0].id;
    sel.value = S.classId;
  }

  async function loadImages() {
    const r = await api("GET", "images");
    if (S.images.length) {
      // keep the order the page opened with (review queue first): an image marked done
      // stays where it is, so "next" means the same image before and after the change
      const fresh = new Map(r.images.map((im) => [im.id, im]));
      const kept = S.images.filter((im) => fresh.has(im.id)).map((im) => fresh.get(im.id));
      const known = new Set(kept.map((im) => im.id));
      S.images = kept.concat(r.images.filter((im) => !known.has(im.id)));
    } else {
      S.images = r.images;
    }
    const c = r.counts;
    $("counts").innerHTML =
      `<span title="open review items">⚑ ${c.review} to review</span>` +
      `<span>${c.todo} todo</span><span>${c.labelled} done</span>` +
      `<span class="muted">${c.annotations} instances</span>`;
    for (const b of document.querySelectorAll("#filters button")) {
      const f = b.dataset.filter;
      const n = f === "all" ? c.images : c[f];
      b.textContent = `${{ all: "All", review: "Review", todo: "Todo", labelled: "Done" }[f]} ${n}`;
    }
    renderList();
  }

  function renderList() {
    const ol = $("image-list");
    ol.innerHTML = "";
    for (const im of S.images) {
      if (S.filter !== "all" && im.status !== S.filter) continue;
      const li = document.createElement("li");
      li.dataset.id = im.id;
      li.dataset.status = im.status;
      if (im.id === S.current) li.classList.add("current");
      const dot = document.createElement("span");
      dot.className = "dot " + im.status;
      dot.title = im.status + (im.error ? ": " + im.error : "");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = im.file_name;
      name.title = im.file_name;
      const n = document.createElement("span");
      n.className = "n";
      n.textContent = im.open_review ? `⚑${im.open_review} · ${im.annotations}` : (im.annotations || "");
      li.append(dot, name, n);
      li.addEventListener("click", () => goto(im.id));
      ol.appendChild(li);
    }
    const cur = ol.querySelector("li.current");
    if (cur) cur.scrollIntoView({ block: "nearest" });
  }

  function listIds() {
    return S.images.filter((im) => im.status !== "error").map((im) => im.id);
  }

  function neighbour(step) {
    const ids = listIds();
    const at = ids.indexOf(S.current);
    if (at < 0) return ids[0];
    return ids[at + step];
  }

  async function goto(id, keepView = false) {
    if (id == null) return;
    if (S.draft && S.draft.mask && id !== S.current) setStatus("the unsaved drawing was discarded");
    if (id !== S.current) {
      S.proposalsByImage.set(S.current, S.proposals);
      S.draft = null;
      S.selected = null;
    }
    const ids = listIds();
    const at = ids.indexOf(id);
    const ahead = at >= 0 ? ids.slice(at + 1, at + 3) : [];
    const detail = await api("GET", `images/${id}` + (ahead.length ? `?next=${ahead.join(",")}` : ""));
    const changedImage = id !== S.current || !S.img;
    S.current = id;
    S.detail = detail;
    S.anns = detail.annotations;
    S.candidates = detail.candidates;
    S.proposals = S.proposalsByImage.get(id) || [];
    if (changedImage) {
      S.img = null;
      render();
      try {
        S.img = await fetchImage(id);
      } catch (e) {
        showError(e);
      }
      S.W = detail.image.width; S.H = detail.image.height;
      if (!keepView) S.view.fit = true;
    }
    const row = S.images.find((im) => im.id === id);
    if (row) Object.assign(row, detail.image);
    history.replaceState(null, "", `#image=${id}` );
    renderList();
    renderInstances();
    renderReview();
    render();
  }

  async function refreshCurrent() {
    if (S.current == null) return;
    const detail = await api("GET", `images/${S.current}`);
    S.detail = detail;
    S.anns = detail.annotations;
    S.candidates = detail.candidates;
    if (S.selected && S.selected.kind === "ann" && !S.anns.some((a) => a.id === S.selected.id)) {
      S.selected = null;
    }
    const row = S.images.find((im) => im.id === S.current);
    if (row) Object.assign(row, detail.image);
    renderInstances();
    renderReview();
    render();
  }

  // ------------------------------------------------------------------ instance panel
  function items() {
    const out = [];
    if (S.draft && S.draft.mask) out.push({ kind: "draft", id: 0, obj: S.draft });
    for (const p of S.proposals) out.push({ kind: "proposal", id: p.pid, obj: p });
    for (const c of S.candidates) out.push({ kind: "candidate", id: c.id, obj: c });
    const review = S.anns.filter((a) => a.review && a.review.length);
    const rest = S.anns.filter((a) => !(a.review && a.review.length));
    for (const a of [...review, ...rest]) out.push({ kind: "ann", id: a.id, obj: a });
    return out;
  }

  function isSelected(kind, id) {
    return S.selected && S.selected.kind === kind && S.selected.id === id;
  }

  function select(kind, id) {
    S.selected = kind == null ? null : { kind, id };
    renderInstances();
    renderReview();
    render();
  }

  function renderInstances() {
    const ol = $("instance-list");
    ol.innerHTML = "";
    const all = items();
    $("instance-count").textContent = `${S.anns.length} saved` +
      (S.proposals.length ? ` · ${S.proposals.length} proposed` : "") +
      (S.candidates.length ? ` · ${S.candidates.length} candidate${S.candidates.length > 1 ? "s" : ""}` : "");
    for (const it of all) {
      const li = document.createElement("li");
      li.dataset.kind = it.kind;
      li.dataset.id = it.id;
      if (isSelected(it.kind, it.id)) li.classList.add("selected");
      const sw = document.createElement("span");
      sw.className = "swatch";
      const label = document.createElement("span");
      label.className = "label";
      const meta = document.createElement("span");
      meta.className = "meta";
      const o = it.obj;
      let tag = "";
      if (it.kind === "draft") {
        sw.style.background = css(DRAFT_RGB);
        label.textContent = `${catName(S.classId)} (drawing)`;
        tag = '<span class="tag draft">draft</span>';
        meta.textContent = `IoU ${o.mask.mask_score.toFixed(2)}`;
      } else if (it.kind === "proposal") {
        const cid = o.category_id ?? S.classId;
        sw.style.background = css(catColor(cid));
        label.textContent = `${catName(cid)} · “${o.prompt}”`;
        tag = '<span class="tag proposal">proposal</span>';
        meta.textContent = `${o.score.toFixed(2)}`;
      } else if (it.kind === "candidate") {
        sw.style.background = css(NONE_RGB);
        label.textContent = o._cat ? catName(o._cat) : "unnamed";
        tag = '<span class="tag candidate">candidate</span>';
        meta.textContent = o.mask_score != null ? `IoU ${Number(o.mask_score).toFixed(2)}` : "";
      } else {
        sw.style.background = css(catColor(o.category_id));
        label.textContent = `#${o.id} ${catName(o.category_id)}`;
        if (o.review && o.review.length) {
          tag = '<span class="tag review">review</span>';
          li.title = o.review_detail || o.review.join(", ");
        } else if (o.reviewed) {
          tag = '<span class="tag ok">✓</span>';
        }
        meta.textContent = o.score != null ? Number(o.score).toFixed(2) : "";
      }
      label.insertAdjacentHTML("beforeend", tag);
      li.append(sw, label, meta);
      li.addEventListener("click", () => select(it.kind, it.id));
      ol.appendChild(li);
    }
    const cur = ol.querySelector("li.selected");
    if (cur) cur.scrollIntoView({ block: "nearest" });
    const has = (k) => S.selected && S.selected.kind === k;
    $("btn-delete").disabled = !has("ann");
    $("btn-accept").disabled = !(S.selected || (S.draft && S.draft.mask));
    $("btn-accept-all").disabled = S.proposals.length === 0;
    $("btn-undo").disabled = S.undo.length === 0 && !(S.draft && S.draft.history.length);
  }

  // the image's open review items, and the selected instance's
  function renderReview() {
    const box = $("review-box");
    const ul = $("review-list");
    ul.innerHTML = "";
    const lines = ((S.detail && S.detail.review) || []).map(
      (it) => it.detail || (it.reasons || []).join(", ") || "image flagged");
    const sel = S.selected;
    if (sel && sel.kind === "ann") {
      const a = S.anns.find((a) => a.id === sel.id);
      if (a && a.review && a.review.length) {
        lines.unshift(`#${a.id} ${catName(a.category_id)}: ${a.review_detail || a.review.join(", ")}`);
      }
    }
    box.hidden = lines.length === 0;
    for (const text of lines) {
      const li = document.createElement("li");
      li.textContent = text;
      ul.appendChild(li);
    }
  }

  // ------------------------------------------------------------------ drawing
  function fit() {
    const r = stage.getBoundingClientRect();
    if (!S.W || !S.H || !r.width) return;
    const s = Math.min(r.width / S.W, r.height / S.H) * 0.98;
    S.view.scale = s;
    S.view.ox = (r.width - S.W * s) / 2;
    S.view.oy = (r.height - S.H * s) / 2;
  }

  function toImage(ev) {
    const r = stage.getBoundingClientRect();
    const sx = ev.clientX - r.left, sy = ev.clientY - r.top;
    return [(sx - S.view.ox) / S.view.scale, (sy - S.view.oy) / S.view.scale, sx, sy];
  }
  const toScreen = (x, y) => [x * S.view.scale + S.view.ox, y * S.view.scale + S.view.oy];

  function bitmapOf(item, rgb, alpha) {
    const key = rgb.join(",") + "/" + alpha;
    if (item._bmpKey !== key) {
      item._bmp = maskCanvas(item, rgb, alpha);
      item._bmpKey = key;
    }
    return item._bmp;
  }

  let dragRect = null;

  function render() {
    const r = stage.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(r.width * dpr), h = Math.round(r.height * dpr);
    if (stage.width !== w || stage.height !== h) { stage.width = w; stage.height = h; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#0d0e11";
    ctx.fillRect(0, 0, w, h);
    if (!S.img) return;
    if (S.view.fit) fit();
    const v = S.view;
    ctx.setTransform(dpr * v.scale, 0, 0, dpr * v.scale, dpr * v.ox, dpr * v.oy);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(S.img, 0, 0, S.W, S.H);
    ctx.imageSmoothingEnabled = false;
    const drawn = [];
    for (const it of items()) {
      const o = it.obj;
      const sel = isSelected(it.kind, it.id);
      let rgb, alpha;
      if (it.kind === "draft") { rgb = DRAFT_RGB; alpha = 0.45; }
      else if (it.kind === "proposal") { rgb = catColor(o.category_id ?? S.classId); alpha = 0.3; }
      else if (it.kind === "candidate") { rgb = NONE_RGB; alpha = 0.25; }
      else { rgb = catColor(o.category_id); alpha = 0.4; }
      if (sel) alpha = Math.min(0.65, alpha + 0.2);
      const target = it.kind === "draft" ? o.mask : o;
      ctx.drawImage(bitmapOf(target, rgb, alpha), 0, 0);
      drawn.push([it, target, rgb, sel]);
    }
    // labels, selection boxes, points in screen space
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const [it, target, rgb, sel] of drawn) {
      const [bx, by, bw, bh] = target.bbox;
      const [x0, y0] = toScreen(bx, by);
      if (sel) {
        ctx.strokeStyle = "#4cc2ff";
        ctx.lineWidth = 2;
        ctx.setLineDash(it.kind === "proposal" || it.kind === "candidate" ? [6, 4] : []);
        ctx.strokeRect(x0 - 1, y0 - 1, bw * v.scale + 2, bh * v.scale + 2);
        ctx.setLineDash([]);
      }
      let text;
      if (it.kind === "draft") text = catName(S.classId) + " ✎";
      else if (it.kind === "proposal") text = catName(it.obj.category_id ?? S.classId) + " ?";
      else if (it.kind === "candidate") text = (it.obj._cat ? catName(it.obj._cat) : "unnamed") + " ?";
      else text = catName(it.obj.category_id) + (it.obj.review && it.obj.review.length ? " ⚑" : "");
      const tw = ctx.measureText(text).width + 8;
      const ty = Math.max(0, y0 - 17);
      ctx.fillStyle = css(rgb, 0.85);
      ctx.fillRect(x0, ty, tw, 16);
      ctx.fillStyle = "#0b0b0b";
      ctx.fillText(text, x0 + 4, ty + 2);
    }
    if (S.draft) {
      if (S.draft.box) {
        const [bx0, by0, bx1, by1] = S.draft.box;
        const [sx0, sy0] = toScreen(bx0, by0), [sx1, sy1] = toScreen(bx1, by1);
        ctx.strokeStyle = css(DRAFT_RGB);
        ctx.lineWidth = 2;
        ctx.setLineDash([5, 4]);
        ctx.strokeRect(sx0, sy0, sx1 - sx0, sy1 - sy0);
        ctx.setLineDash([]);
      }
      for (const [x, y, l] of S.draft.points) {
        const [sx, sy] = toScreen(x, y);
        ctx.beginPath();
        ctx.arc(sx, sy, 5.5, 0, 2 * Math.PI);
        ctx.fillStyle = l ? "#3ecf8e" : "#ff5c5c";
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#fff";
        ctx.stroke();
        ctx.fillStyle = "#fff";
        ctx.fillRect(sx - 3, sy - 0.75, 6, 1.5);
        if (l) ctx.fillRect(sx - 0.75, sy - 3, 1.5, 6);
      }
    }
    if (dragRect) {
      const [a, b, c, d] = dragRect;
      ctx.strokeStyle = css(DRAFT_RGB);
      ctx.lineWidth = 1.5;
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(Math.min(a, c), Math.min(b, d), Math.abs(c - a), Math.abs(d - b));
      ctx.setLineDash([]);
    }
  }

  // ------------------------------------------------------------------ live SAM
  function newDraft() {
    return { points: [], box: null, logits: null, mask: null, history: [] };
  }

  function predict() {
    const d = S.draft;
    const imageId = S.current;
    const points = d.points.map((p) => p.slice());
    const box = d.box ? d.box.slice() : null;
    S.chain = S.chain.then(async () => {
      if (S.draft !== d || S.current !== imageId) return;
      const body = { points: points.length ? points : null, box, mask_input: d.logits };
      const t0 = performance.now();
      const r = await api("POST", `images/${imageId}/predict`, body);
      if (S.draft !== d) return;
      d.history.push({ points: d.mask ? d.mask._points : [], box: d.mask ? d.mask._box : null, logits: d.logits, mask: d.mask });
      r._points = points;
      r._box = box;
      d.logits = r.logits;
      d.mask = r;
      S.selected = { kind: "draft", id: 0 };
      renderInstances();
      render();
      const ms = performance.now() - t0; // request, JSON, RLE decoding and drawing
      S.clickMs.push(ms);
      if (S.clickMs.length > 200) S.clickMs.shift();
      setStatus(`mask in ${Math.round(ms)} ms` + (r.timings.encoder > 0.01 ? ` (image encoded in ${Math.round(r.timings.encoder * 1000)} ms)` : ""));
    }).catch(showError);
  }

  function addPoint(x, y, label) {
    if (!S.draft) S.draft = newDraft();
    S.draft.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, label]);
    render();
    predict();
  }

  function setBox(x0, y0, x1, y1) {
    if (!S.draft) S.draft = newDraft();
    const c = (v, m) => Math.max(0, Math.min(m, v));
    S.draft.box = [c(Math.min(x0, x1), S.W), c(Math.min(y0, y1), S.H), c(Math.max(x0, x1), S.W), c(Math.max(y0, y1), S.H)];
    render();
    predict();
  }

  function undoDraftStep() {
    const d = S.draft;
    const prev = d.history.pop();
    if (!prev || !prev.mask) {
      S.draft = null;
      S.selected = null;
    } else {
      d.points = prev.points.map((p) => p.slice());
      d.box = prev.box;
      d.logits = prev.logits;
      d.mask = prev.mask;
    }
    renderInstances();
    render();
  }

  // ------------------------------------------------------------------ editing
  function pushUndo(entry) {
    entry.image = S.current;
    S.undo.push(entry);
    if (S.undo.length > 200) S.undo.shift();
  }

  function annFields(a) {
    const f = { segmentation: a.segmentation, category_id: a.category_id };
    for (const k of ["score", "mask_score", "prompt", "reviewed"]) if (a[k] != null) f[k] = a[k];
    return f;
  }

  function pendingAfter() {
    const list = items().filter((it) => it.kind === "proposal" || it.kind === "candidate" ||
      (it.kind === "ann" && it.obj.review && it.obj.review.length));
    return list.length ? list[0] : null;
  }

  function selectNextPending() {
    const next = pendingAfter();
    S.selected = next ? { kind: next.kind, id: next.id } : null;
  }

  async function saveNew(fields) {
    const ann = await api("POST", `images/${S.current}/annotations`, fields);
    S.anns.push(ann);
    return ann;
  }

  async function accept() {
    const sel = S.selected;
    try {
      if (S.draft && S.draft.mask && (!sel || sel.kind === "draft")) {
        const d = S.draft;
        const ann = await saveNew({
          segmentation: d.mask.segmentation, category_id: S.classId, mask_score: d.mask.mask_score,
        });
        pushUndo({ type: "create", id: ann.id, draft: d });
        S.draft = null;
        setStatus(`saved #${ann.id} ${catName(ann.category_id)}`, "ok");
      } else if (sel && sel.kind === "proposal") {
        const p = S.proposals.find((p) => p.pid === sel.id);
        const ann = await saveNew({
          segmentation: p.segmentation, category_id: p.category_id ?? S.classId,
          score: p.score, mask_score: p.mask_score, prompt: p.prompt,
        });
        S.proposals = S.proposals.filter((q) => q !== p);
        pushUndo({ type: "create", id: ann.id, proposal: p });
        setStatus(`saved #${ann.id} ${catName(ann.category_id)}`, "ok");
      } else if (sel && sel.kind === "candidate") {
        const c = S.candidates.find((c) => c.id === sel.id);
        const ann = await api("POST", `candidates/${c.id}/accept`, { category_id: c._cat ?? S.classId });
        S.candidates = S.candidates.filter((q) => q !== c);
        S.anns.push(ann);
        pushUndo({ type: "create", id: ann.id, proposal: asProposal(c, ann.category_id) });
        setStatus(`candidate named ${catName(ann.category_id)} (#${ann.id})`, "ok");
      } else if (sel && sel.kind === "ann") {
        const a = S.anns.find((a) => a.id === sel.id);
        const before = { reviewed: !!a.reviewed };
        const ann = await api("PATCH", `annotations/${a.id}`, { reviewed: true });
        pushUndo({ type: "patch", id: a.id, before });
        setStatus(`accepted #${ann.id}`, "ok");
      } else {
        setStatus("nothing to accept: click on the image or select an instance");
        return;
      }
      selectNextPending();
      await refreshCurrent();
      bumpListRow();
    } catch (e) {
      await recover(e);
    }
  }

  function asProposal(c, cid) {
    return {
      pid: S.nextPid++, segmentation: c.segmentation, bbox: c.bbox, score: 1.0,
      mask_score: c.mask_score, prompt: "candidate", category_id: cid ?? null,
    };
  }

  async function acceptAll() {
    const ps = S.proposals.slice();
    for (const p of ps) {
      S.selected = { kind: "proposal", id: p.pid };
      await accept();
    }
  }

  async function reject() {
    const sel = S.selected;
    try {
      if (S.draft && (!sel || sel.kind === "draft")) {
        pushUndo({ type: "draft", draft: S.draft });
        S.draft = null;
        S.selected = null;
        setStatus("drawing cleared");
      } else if (sel && sel.kind === "proposal") {
        const p = S.proposals.find((p) => p.pid === sel.id);
        S.proposals = S.proposals.filter((q) => q !== p);
        pushUndo({ type: "unpropose", proposal: p });
        selectNextPending();
        setStatus("proposal rejected");
      } else if (sel && sel.kind === "candidate") {
        const c = S.candidates.find((c) => c.id === sel.id);
        await api("POST", `candidates/${c.id}/reject`);
        S.candidates = S.candidates.filter((q) => q !== c);
        pushUndo({ type: "unpropose", proposal: asProposal(c, c._cat) });
        selectNextPending();
        setStatus("candidate rejected");
      } else if (sel && sel.kind === "ann") {
        await del();
        return;
      } else {
        S.selected = null;
      }
      renderInstances();
      render();
    } catch (e) {
      await recover(e);
    }
  }

  async function del() {
    const sel = S.selected;
    if (!sel || sel.kind !== "ann") {
      setStatus("select a saved instance to delete it");
      return;
    }
    try {
      const gone = await api("DELETE", `annotations/${sel.id}`);
      pushUndo({ type: "delete", ann: gone });
      S.anns = S.anns.filter((a) => a.id !== sel.id);
      selectNextPending();
      setStatus(`deleted #${gone.id}`);
      await refreshCurrent();
      bumpListRow();
    } catch (e) {
      await recover(e);
    }
  }

  async function setClass(cid) {
    if (!S.categories.some((c) => c.id === cid)) return;
    S.classId = cid;
    $("class-select").value = cid;
    const sel = S.selected;
    try {
      if (sel && sel.kind === "ann") {
        const a = S.anns.find((a) => a.id === sel.id);
        if (a && a.category_id !== cid) {
          const before = { category_id: a.category_id, reviewed: !!a.reviewed };
          await api("PATCH", `annotations/${a.id}`, { category_id: cid });
          pushUndo({ type: "patch", id: a.id, before });
          setStatus(`#${a.id} is now ${catName(cid)}`, "ok");
          await refreshCurrent();
          return;
        }
      } else if (sel && sel.kind === "proposal") {
        const p = S.proposals.find((p) => p.pid === sel.id);
        if (p) p.category_id = cid;
      } else if (sel && sel.kind === "candidate") {
        const c = S.candidates.find((c) => c.id === sel.id);
        if (c) c._cat = cid;
      }
      setStatus(`class: ${catName(cid)}`);
      renderInstances();
      render();
    } catch (e) {
      await recover(e);
    }
  }

  async function done() {
    if (S.current == null) return;
    try {
      const unreviewed = S.anns.filter((a) => !a.reviewed).map((a) => a.id);
      const r = await api("POST", `images/${S.current}/done`, { done: true });
      pushUndo({ type: "done", unreviewed });
      setStatus(`${r.file_name} done`, "ok");
      await loadImages();
      const next = neighbour(1);
      if (next != null) await goto(next); else await refreshCurrent();
    } catch (e) {
      await recover(e);
    }
  }

  async function undo() {
    if (S.draft && S.draft.history.length && (!S.selected || S.selected.kind === "draft")) {
      undoDraftStep();
      return;
    }
    const e = S.undo.pop();
    if (!e) {
      setStatus("nothing to undo");
      return;
    }
    try {
      if (e.image !== S.current) await goto(e.image);
      if (e.type === "create") {
        await api("DELETE", `annotations/${e.id}`);
        if (e.draft) { S.draft = e.draft; S.selected = { kind: "draft", id: 0 }; }
        if (e.proposal) { S.proposals.push(e.proposal); S.selected = { kind: "proposal", id: e.proposal.pid }; }
      } else if (e.type === "delete") {
        await api("POST", `images/${S.current}/annotations`, { ...annFields(e.ann), id: e.ann.id });
        S.selected = { kind: "ann", id: e.ann.id };
      } else if (e.type === "patch") {
        await api("PATCH", `annotations/${e.id}`, e.before);
      } else if (e.type === "draft") {
        S.draft = e.draft;
        S.selected = { kind: "draft", id: 0 };
      } else if (e.type === "unpropose") {
        S.proposals.push(e.proposal);
        S.selected = { kind: "proposal", id: e.proposal.pid };
      } else if (e.type === "done") {
        await api("POST", `images/${S.current}/done`, { done: false });
        for (const id of e.unreviewed) await api("PATCH", `annotations/${id}`, { reviewed: false });
      }
      setStatus("undone");
      await refreshCurrent();
      bumpListRow();
    } catch (err) {
      await recover(err);
    }
  }

  async function recover(e) {
    showError(e);
    if (e.status === 404 || e.status === 409) {
      // another tab changed this image: show the dataset as it is now
      try { await refreshCurrent(); } catch (e2) { /* keep the message */ }
    }
  }

  function bumpListRow() {
    const row = S.images.find((im) => im.id === S.current);
    if (row && S.detail) Object.assign(row, S.detail.image);
    renderList();
  }

  // ------------------------------------------------------------------ text prompts
  async function textPrompt(text) {
    if (!text.trim() || S.current == null) return;
    const imageId = S.current;
    try {
      setStatus(`finding “${text}”…`);
      const r = await api("POST", `images/${imageId}/text`, { text });
      if (S.current !== imageId) return;
      const found = r.instances.map((inst) => ({ ...inst, pid: S.nextPid++ }));
      S.proposals = S.proposals.concat(found);
      S.selected = found.length ? { kind: "proposal", id: found[0].pid } : S.selected;
      setStatus(found.length ? `${found.length} proposal${found.length > 1 ? "s" : ""}: A accepts, R rejects, Shift+A accepts all` : "nothing found");
      renderInstances();
      render();
    } catch (e) {
      showError(e);
    }
  }

  // ------------------------------------------------------------------ input
  let down = null;
  let pan = null;
  let spaceDown = false;

  stage.addEventListener("contextmenu", (ev) => ev.preventDefault());
  stage.addEventListener("mousedown", (ev) => {
    stage.focus();
    if (!S.img) return;
    if (ev.button === 1 || (ev.button === 0 && spaceDown)) {
      pan = { x: ev.clientX, y: ev.clientY, ox: S.view.ox, oy: S.view.oy };
      ev.preventDefault();
      return;
    }
    if (ev.button !== 0 && ev.button !== 2) return;
    const [x, y, sx, sy] = toImage(ev);
    down = { x, y, sx, sy, button: ev.button, shift: ev.shiftKey, alt: ev.altKey };
  });
  window.addEventListener("mousemove", (ev) => {
    if (pan) {
      S.view.fit = false;
      S.view.ox = pan.ox + ev.clientX - pan.x;
      S.view.oy = pan.oy + ev.clientY - pan.y;
      render();
      return;
    }
    if (!down || down.button !== 0 || down.alt) return;
    const r = stage.getBoundingClientRect();
    const sx = ev.clientX - r.left, sy = ev.clientY - r.top;
    if (dragRect || Math.hypot(sx - down.sx, sy - down.sy) > 5) {
      dragRect = [down.sx, down.sy, sx, sy];
      render();
    }
  });
  window.addEventListener("mouseup", (ev) => {
    if (pan) { pan = null; return; }
    if (!down) return;
    const d = down;
    down = null;
    const [x, y] = toImage(ev);
    if (dragRect) {
      dragRect = null;
      if (Math.abs(x - d.x) >= 2 && Math.abs(y - d.y) >= 2) setBox(d.x, d.y, x, y);
      else render();
      return;
    }
    if (d.x < 0 || d.y < 0 || d.x > S.W || d.y > S.H) return;
    if (d.alt) {
      selectAt(d.x, d.y);
      return;
    }
    addPoint(d.x, d.y, d.button === 2 || d.shift ? 0 : 1);
  });
  stage.addEventListener("wheel", (ev) => {
    if (!S.img) return;
    ev.preventDefault();
    const r = stage.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const f = Math.exp(-ev.deltaY * 0.0015);
    const v = S.view;
    const s = Math.max(0.05, Math.min(40, v.scale * f));
    v.ox = mx - ((mx - v.ox) * s) / v.scale;
    v.oy = my - ((my - v.oy) * s) / v.scale;
    v.scale = s;
    v.fit = false;
    render();
  }, { passive: false });
  window.addEventListener("resize", () => render());

  function selectAt(x, y) {
    const xi = Math.floor(x), yi = Math.floor(y);
    let best = null;
    for (const it of items()) {
      if (it.kind === "draft") continue;
      const o = it.obj;
      if (!o._m) o._m = decodeRLE(o.segmentation);
      const h = o.segmentation.size[0];
      if (o._m[xi * h + yi]) {
        const area = o.area || o.bbox[2] * o.bbox[3];
        if (!best || area < best.area) best = { it, area };
      }
    }
    select(best ? best.it.kind : null, best ? best.it.id : null);
  }

  function cycleSelection(step) {
    const all = items();
    if (!all.length) return;
    let at = all.findIndex((it) => isSelected(it.kind, it.id));
    at = at < 0 ? (step > 0 ? 0 : all.length - 1) : (at + step + all.length) % all.length;
    select(all[at].kind, all[at].id);
  }

  function cycleClass(step) {
    const ids = S.categories.map((c) => c.id);
    const at = ids.indexOf(S.classId);
    setClass(ids[(at + step + ids.length) % ids.length]);
  }

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    const typing = t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
    if (typing) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    if (ev.key === " ") { spaceDown = true; ev.preventDefault(); return; }
    const k = ev.key;
    const ctrl = ev.ctrlKey || ev.metaKey;
    if (ctrl && (k === "z" || k === "Z")) { ev.preventDefault(); undo(); return; }
    if (ctrl || ev.altKey) return;
    if (k === "ArrowRight" || k === "n" || k === "N") { ev.preventDefault(); goto(neighbour(1)).catch(showError); }
    else if (k === "ArrowLeft" || k === "p" || k === "P") { ev.preventDefault(); goto(neighbour(-1)).catch(showError); }
    else if (k === "A" && ev.shiftKey) acceptAll();
    else if (k === "a" || k === "Enter") { ev.preventDefault(); accept(); }
    else if (k === "r" || k === "R" || k === "Escape") reject();
    else if (k === "Delete" || k === "Backspace") { ev.preventDefault(); del(); }
    else if (k === "u" || k === "U") undo();
    else if (k === "d" || k === "D") done();
    else if (k === "Tab") { ev.preventDefault(); cycleSelection(ev.shiftKey ? -1 : 1); }
    else if (k === "c") cycleClass(1);
    else if (k === "C") cycleClass(-1);
    else if (k === "t" || k === "T" || k === "/") { ev.preventDefault(); $("text-input").focus(); }
    else if (k === "0") { S.view.fit = true; render(); }
    else if (k === "?" || k === "h" || k === "H") toggleHelp();
    else if (/^[1-9]$/.test(k)) setClass(Number(k));
  });
  document.addEventListener("keyup", (ev) => { if (ev.key === " ") spaceDown = false; });

  function toggleHelp() {
    $("help").classList.toggle("hidden");
  }

  $("text-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    textPrompt($("text-input").value);
    $("text-input").blur();
  });
  $("text-ontology").addEventListener("click", () => {
    const prompts = S.categories.flatMap((c) => (c.prompts && c.prompts.length ? c.prompts : [c.name]));
    $("text-input").value = prompts.map((p) => p + ".").join(" ");
    $("text-input").focus();
  });
  $("class-select").addEventListener("change", (ev) => { setClass(Number(ev.target.value)); ev.target.blur(); });
  $("btn-accept").addEventListener("click", accept);
  $("btn-accept-all").addEventListener("click", acceptAll);
  $("btn-reject").addEventListener("click", reject);
  $("btn-delete").addEventListener("click", del);
  $("btn-undo").addEventListener("click", undo);
  $("btn-done").addEventListener("click", done);
  $("btn-prev").addEventListener("click", () => goto(neighbour(-1)).catch(showError));
  $("btn-next").addEventListener("click", () => goto(neighbour(1)).catch(showError));
  $("help-toggle").addEventListener("click", toggleHelp);
  for (const b of document.querySelectorAll("#filters button")) {
    b.addEventListener("click", () => {
      S.filter = b.dataset.filter;
      for (const o of document.querySelectorAll("#filters button")) o.classList.toggle("active", o === b);
      renderList();
    });
  }

  // another tab or process changed the dataset: show it (the page polls a small endpoint)
  async function poll() {
    if (document.hidden || S.busy) return;
    try {
      const info = await fetch("api/info", { headers: TOKEN ? { "X-Grounded-SAM-Token": TOKEN } : {} });
      if (!info.ok) return;
      const data = await info.json();
      if (data.revision !== S.revision) {
        S.revision = data.revision;
        await loadImages();
        await refreshCurrent();
      }
    } catch (e) { /* the server restarts: try again later */ }
  }

  // ------------------------------------------------------------------ start
  async function start() {
    try {
      await loadInfo();
      await loadImages();
      const m = /image=(\d+)/.exec(location.hash);
      const want = m ? Number(m[1]) : null;
      const first = S.images.find((im) => im.id === want) || S.images.find((im) => im.status !== "error");
      if (first) await goto(first.id);
      else setStatus("no images: start the app with --images DIR");
      setInterval(poll, 3000);
    } catch (e) {
      showError(e);
    }
  }
  window.groundedSam = S; // for debugging and the browser tests
  start();
})();
