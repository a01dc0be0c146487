// saekit inspect: the index of latents and a panel per latent, from the data files in data/.
// Data files are scripts calling saekitData(name, value) (browsers refuse fetch() on file://);
// they are loaded on demand, so opening a site of 24,576 latents reads only its index.
"use strict";

(function () {
  const PAGE_ROWS = 100;
  const cache = new Map();
  const waiting = new Map();
  const state = { site: null, vocab: null, sae: 0, index: null,
                  sort: { key: "latent", descending: false }, filter: "", show: "all", page: 0 };

  // -- data loading --------------------------------------------------------------------------

  window.saekitData = function (name, value) {
    cache.set(name, value);
    const entry = waiting.get(name);
    if (entry) { waiting.delete(name); entry.resolve(value); }
    if (name === "site") start(value);
  };

  function load(name) {
    if (cache.has(name)) return Promise.resolve(cache.get(name));
    if (waiting.has(name)) return waiting.get(name).promise;
    const entry = {};
    entry.promise = new Promise((resolve, reject) => { entry.resolve = resolve; entry.reject = reject; });
    waiting.set(name, entry);
    const script = document.createElement("script");
    script.src = "data/" + name + ".js";
    script.onerror = () => {
      waiting.delete(name);
      entry.reject(new Error("cannot load data/" + name + ".js"));
    };
    document.head.appendChild(script);
    return entry.promise;
  }

  // -- small DOM and number helpers ----------------------------------------------------------

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function svgEl(tag, attributes, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function number(value, digits = 3) {
    if (value == null) return "–";
    if (value === 0) return "0";
    const size = Math.abs(value);
    if (size >= 1e4 || size < 1e-3) return value.toExponential(digits - 1);
    return String(Number(value.toPrecision(digits)));
  }

  function density(value) {
    if (value == null) return "–";
    if (value === 0) return "0";
    if (value >= 0.001) return Number((100 * value).toPrecision(3)) + "%";
    return value.toExponential(2);
  }

  function tokenText(id) {
    const text = state.vocab[String(id)];
    if (text == null) return "<" + id + ">";
    return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍");
  }

  function chips(ids) {
    return el("span", {}, ...ids.map((id) => el("span", { class: "chip", text: tokenText(id) })));
  }

  function fail(error) {
    const app = document.getElementById("app");
    app.replaceChildren(el("p", { class: "error", text: String(error && error.message || error) }));
    console.error(error);
  }

  // -- routing -------------------------------------------------------------------------------

  function route() {
    const params = new URLSearchParams(location.hash.slice(1));
    const sae = Math.min(Number(params.get("sae") || 0), state.site.saes.length - 1);
    const latent = params.has("latent") ? Number(params.get("latent")) : null;
    return { sae: Number.isFinite(sae) && sae >= 0 ? sae : 0, latent };
  }

  function go(sae, latent) {
    location.hash = "sae=" + sae + (latent == null ? "" : "&latent=" + latent);
  }

  function start(site) {
    state.site = site;
    const store = site.store || {};
    document.getElementById("provenance").textContent =
      "model " + site.model + " · store " + store.location + " · " +
      site.settings.split + " rows · saekit " + site.saekit_version;
    document.getElementById("home").addEventListener("click", (event) => {
      event.preventDefault();
      go(state.sae, null);
    });
    window.addEventListener("hashchange", render);
    const first = "sae-" + route().sae + "/index";  // loaded beside the vocabulary, not after it
    Promise.all([load("vocab"), load(first)]).then(([vocab]) => { state.vocab = vocab; render(); }).catch(fail);
  }

  function render() {
    const { sae, latent } = route();
    document.body.dataset.ready = "";
    const view = latent == null ? showIndex(sae) : showLatent(sae, latent);
    view.catch(fail);
  }

  // -- index ---------------------------------------------------------------------------------

  async function loadIndex(sae) {
    if (state.sae !== sae || state.index == null) {
      state.sae = sae;
      state.index = null;
      state.page = 0;
      const index = await load("sae-" + sae + "/index");
      if (state.sae === sae) state.index = index;
      return index;
    }
    return state.index;
  }

  async function showIndex(sae) {
    const app = document.getElementById("app");
    const index = await loadIndex(sae);
    const info = state.site.saes[sae];
    const selector = el("select", { id: "sae-select", onchange: (e) => go(Number(e.target.value), null) },
      ...state.site.saes.map((s) => el("option", { value: s.id, text: s.name + " (" + s.variant + ", " + s.mode + ")" })));
    selector.value = String(sae);
    const summary = el("section", {},
      el("div", { class: "controls" }, el("label", { text: "SAE " }, selector)),
      el("dl", { class: "stats" },
        stat("latents", info.latents.toLocaleString() + " of " + info.d_sae.toLocaleString()),
        stat("rows read", info.rows.toLocaleString()),
        stat("dead", info.dead.toLocaleString() + " (" + percent(info.dead, info.latents) + ")"),
        stat("dense (> " + 100 * state.site.settings.dense_threshold + "%)",
             info.dense.toLocaleString() + " (" + percent(info.dense, info.latents) + ")"),
        stat("hook", info.hook), stat("k", info.k == null ? "–" : String(info.k))));
    const chart = el("section", {}, el("h2", { text: "Density of the latents (fraction of rows where each fires)" }),
      densityChart(index.density));
    const search = el("input", { type: "search", id: "filter", placeholder: "latent number or token",
                                 value: state.filter });
    search.addEventListener("input", () => { state.filter = search.value; state.page = 0; drawTable(); });
    const show = el("select", { id: "show" }, ...["all", "alive", "dead", "dense"].map(
      (v) => el("option", { value: v, text: v })));
    show.value = state.show;
    show.addEventListener("change", () => { state.show = show.value; state.page = 0; drawTable(); });
    const tableSection = el("section", {},
      el("div", { class: "controls" }, el("label", { text: "Filter " }, search), el("label", { text: "Show " }, show)),
      el("div", { id: "table" }));
    app.replaceChildren(summary, chart, tableSection);
    drawTable();
    performance.mark("saekit-index-rendered");
    document.body.dataset.ready = "index";
  }

  function stat(label, value) {
    return el("div", {}, el("dt", { text: label }), el("dd", { text: value }));
  }

  function percent(part, whole) {
    return whole ? Number((100 * part / whole).toPrecision(3)) + "%" : "–";
  }

  const COLUMNS = [
    { key: "latent", label: "latent" },
    { key: "density", label: "density" },
    { key: "mean", label: "mean act." },
    { key: "max", label: "max act." },
    { key: "fires_on", label: "fires on (top rows)", tokens: true },
    { key: "promotes", label: "promotes", tokens: true },
    { key: "flags", label: "", flags: true },
  ];

  function visibleRows() {
    const index = state.index;
    const threshold = state.site.settings.dense_threshold;
    const query = state.filter.trim().toLowerCase();
    let rows = index.latent.map((_, i) => i);
    if (state.show === "dead") rows = rows.filter((i) => index.count[i] === 0);
    if (state.show === "alive") rows = rows.filter((i) => index.count[i] > 0);
    if (state.show === "dense") rows = rows.filter((i) => index.density[i] > threshold);
    if (query) {
      rows = rows.filter((i) => String(index.latent[i]) === query ||
        index.fires_on[i].concat(index.promotes[i]).some((id) => tokenText(id).toLowerCase().includes(query)));
    }
    const { key, descending } = state.sort;
    const values = index[key];
    const direction = descending ? -1 : 1;
    rows.sort((a, b) => (values[a] - values[b]) * direction || index.latent[a] - index.latent[b]);
    return rows;
  }

  function drawTable() {
    const index = state.index;
    const threshold = state.site.settings.dense_threshold;
    const rows = visibleRows();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    state.page = Math.min(state.page, pages - 1);
    const shown = rows.slice(state.page * PAGE_ROWS, (state.page + 1) * PAGE_ROWS);
    const head = el("tr", {}, ...COLUMNS.map((column) => {
      const th = el("th", { class: column.tokens ? "tokens" : "", "data-key": column.key });
      if (column.tokens || column.flags) { th.textContent = column.label; return th; }
      if (state.sort.key === column.key) th.setAttribute("aria-sort", state.sort.descending ? "descending" : "ascending");
      th.append(el("button", { text: column.label, onclick: () => {
        const same = state.sort.key === column.key;
        state.sort = { key: column.key, descending: same ? !state.sort.descending : column.key !== "latent" };
        state.page = 0;
        drawTable();
      } }));
      return th;
    }));
    const body = el("tbody", {}, ...shown.map((i) => {
      const flags = el("td", {});
      if (index.count[i] === 0) flags.append(el("span", { class: "flag dead", text: "dead" }));
      if (index.density[i] > threshold) flags.append(el("span", { class: "flag dense", text: "dense" }));
      return el("tr", { "data-latent": index.latent[i], onclick: () => go(state.sae, index.latent[i]) },
        el("td", { text: String(index.latent[i]) }),
        el("td", { text: density(index.density[i]) }),
        el("td", { text: number(index.mean[i]) }),
        el("td", { text: number(index.max[i]) }),
        el("td", { class: "tokens" }, chips(index.fires_on[i])),
        el("td", { class: "tokens" }, chips(index.promotes[i])),
        flags);
    }));
    const pager = el("div", { class: "pager" },
      el("button", { text: "‹ previous", onclick: () => { state.page -= 1; drawTable(); } }),
      el("span", { text: rows.length ? (state.page * PAGE_ROWS + 1) + "–" + (state.page * PAGE_ROWS + shown.length) +
                   " of " + rows.length.toLocaleString() + " latents" : "no latent matches" }),
      el("button", { text: "next ›", onclick: () => { state.page += 1; drawTable(); } }));
    pager.children[0].disabled = state.page === 0;
    pager.children[2].disabled = state.page >= pages - 1;
    document.getElementById("table").replaceChildren(
      el("table", { class: "latents" }, el("thead", {}, head), body), pager);
  }

  // -- charts (plain SVG) --------------------------------------------------------------------

  function barChart(bars, options) {
    const width = 640, height = options.height || 150, left = 44, bottom = 22, top = 8;
    const plotWidth = width - left - 8, plotHeight = height - bottom - top;
    const largest = Math.max(1, ...bars.map((b) => b.count));
    const step = plotWidth / Math.max(bars.length, 1);
    const chart = svgEl("svg", { class: "chart", viewBox: "0 0 " + width + " " + height, role: "img",
                                 "aria-label": options.label });
    chart.append(svgEl("line", { class: "axis", x1: left, y1: top + plotHeight, x2: width - 8, y2: top + plotHeight }));
    bars.forEach((bar, i) => {
      const h = plotHeight * bar.count / largest;
      const rect = svgEl("rect", { class: "bar", x: left + i * step + 0.5, y: top + plotHeight - h,
                                   width: Math.max(step - 1, 0.5), height: h });
      rect.append(svgEl("title", {}, bar.title));
      chart.append(rect);
      if (bar.tick != null) {
        chart.append(svgEl("text", { x: left + i * step, y: height - 6 }, bar.tick));
      }
    });
    chart.append(svgEl("text", { x: 2, y: top + 8 }, largest.toLocaleString()));
    chart.append(svgEl("text", { x: 2, y: top + plotHeight }, "0"));
    return chart;
  }

  function densityChart(densities) {
    const alive = densities.filter((d) => d > 0).map((d) => Math.log10(d));
    const dead = densities.length - alive.length;
    if (!alive.length) return el("p", { class: "note", text: "Every latent is dead on these rows." });
    const perDecade = 4;
    const low = Math.floor(alive.reduce((a, b) => Math.min(a, b))); // (no spread: any length)
    const high = Math.max(0, Math.ceil(alive.reduce((a, b) => Math.max(a, b))));
    const counts = new Array((high - low) * perDecade + 1).fill(0);
    for (const value of alive) counts[Math.min(counts.length - 1, Math.floor((value - low) * perDecade))] += 1;
    const bars = counts.map((count, i) => {
      const from = low + i / perDecade;
      return { count, title: count + " latents with density 1e" + from.toFixed(2) + " to 1e" + (from + 1 / perDecade).toFixed(2),
               tick: i % perDecade === 0 ? "1e" + from : null };
    });
    return el("div", {}, barChart(bars, { label: "density histogram" }),
      el("p", { class: "note", text: "log10 density, " + perDecade + " bins per decade; " + dead.toLocaleString() +
               " dead latents (density 0) are not drawn." }));
  }

  function activationChart(histogram, label) {
    const bins = state.site.settings.bins;
    if (!histogram.counts.length) return el("p", { class: "note", text: "never fired" });
    const bars = histogram.counts.map((count, i) => {
      const b = histogram.first_bin + i;
      const from = Math.pow(10, bins.lowest + b / bins.per_decade);
      const to = Math.pow(10, bins.lowest + (b + 1) / bins.per_decade);
      return { count, title: count + " rows with " + number(from) + " ≤ value < " + number(to),
               tick: i === 0 || b % bins.per_decade === 0 ? number(from, 2) : null };
    });
    return barChart(bars, { label, height: 130 });
  }

  // -- one latent ----------------------------------------------------------------------------

  async function showLatent(sae, latent) {
    const app = document.getElementById("app");
    const info = state.site.saes[sae];
    const index = await loadIndex(sae);
    const place = index.latent.indexOf(latent);
    const back = el("a", { href: "#sae=" + sae, text: "← all latents of " + info.name });
    if (place < 0) {
      app.replaceChildren(el("div", { class: "nav" }, back),
        el("p", { class: "error", text: "Latent " + latent + " was not inspected in this site." }));
      document.body.dataset.ready = "latent";
      return;
    }
    const data = await load("sae-" + sae + "/latents/" + latent);
    const header = el("section", {},
      el("h2", { text: "Latent " + latent + " of " + info.name }),
      el("dl", { class: "stats" },
        stat("density", density(data.density)), stat("fires on", data.count.toLocaleString() + " rows"),
        stat("mean when firing", number(data.mean)), stat("max", number(data.max)),
        data.grad_term ? stat("mean |dᵀg|", number(data.grad_term.mean)) : null));
    const charts = el("div", { class: "row" },
      el("section", {}, el("h2", { text: "Activation histogram (log-spaced bins)" }),
         activationChart(data.histogram, "activation histogram")),
      data.grad_term ? el("section", {}, el("h2", { text: "Gradient term |dᵀg| where it fires (g-SAE)" }),
         activationChart(data.grad_term.histogram, "gradient term histogram")) : null,
      el("section", {}, el("h2", { text: "Logit effects (through ln_f and the unembedding)" }),
         effects(data.logits)));
    const top = el("section", { id: "top-contexts" }, el("h2", { text: "Top activations" }),
      ...data.top.map((context) => contextLine(context, data.max)));
    const bands = el("section", { id: "quantile-samples" },
      el("h2", { text: "Random firings by activation decile" }),
      ...data.bands.flatMap((band) => [
        el("div", { class: "band-title", text: "decile " + band.decile + ": " + number(band.low) + " – " + number(band.high) }),
        ...band.contexts.map((context) => contextLine(context, data.max))]));
    if (!data.top.length) top.append(el("p", { class: "note", text: "This latent never fired on the rows read." }));
    app.replaceChildren(el("div", { class: "nav" }, back, neighbour(sae, index.latent[place - 1], true),
      neighbour(sae, index.latent[place + 1], false)), header, charts, top, bands);
    document.body.dataset.ready = "latent";
  }

  function neighbour(sae, latent, previous) {
    if (latent == null) return null;
    return el("a", { href: "#sae=" + sae + "&latent=" + latent,
                     text: previous ? "‹ latent " + latent : "latent " + latent + " ›" });
  }

  function effects(logits) {
    if (!logits) return el("p", { class: "note", text: "Not available: the SAE is not on the residual stream, or the model has no unembedding." });
    const largest = Math.max(...logits.top.map((p) => Math.abs(p[1])), ...logits.bottom.map((p) => Math.abs(p[1])), 1e-12);
    const list = (pairs, kind) => el("ol", { class: kind }, ...pairs.map(([id, value]) =>
      el("li", {}, el("span", { class: "bar", style: "width:" + (60 * Math.abs(value) / largest).toFixed(1) + "px" }),
        el("span", { class: "chip", text: tokenText(id) }), el("span", { class: "num", text: number(value) }))));
    return el("div", { class: "effects" },
      el("div", {}, el("h3", { text: "promotes" }), list(logits.top, "up")),
      el("div", {}, el("h3", { text: "suppresses" }), list(logits.bottom, "down")));
  }

  function contextLine(context, largest) {
    const text = el("span", { class: "text" });
    context.tokens.forEach((id, i) => {
      const value = context.values[i];
      const token = el("span", { class: "tok" + (i === context.centre ? " centre" : "") + (value == null ? " unencoded" : ""),
                                 text: tokenText(id) });
      token.title = JSON.stringify(state.vocab[String(id)] ?? "<" + id + ">") + "  " +
        (value == null ? "position 0 (not encoded)" : "activation " + number(value, 4));
      if (value != null && value > 0) {
        const alpha = Math.min(1, value / (largest || 1));
        token.style.background = "rgba(var(--fire), " + (0.12 + 0.78 * alpha).toFixed(3) + ")";
        token.dataset.value = String(value);
      }
      text.append(token);
    });
    return el("div", { class: "context", "data-row": context.row }, el("span", { class: "value", text: number(context.value) }), text);
  }
})();
