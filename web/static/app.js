// Fairbook trading page: vanilla JS, one WebSocket, REST for orders. Prices and quantities stay
// decimal strings; sums (cumulative depth, what an order locks) use BigInt scaled integers, never
// floats.
"use strict";

const DEPTH = 20;
const $ = (id) => document.getElementById(id);
const state = {
  symbols: [], markets: {}, symbol: null, ws: null, backoff: 500, retryTimer: null,
  lastMessage: 0, apiKey: sessionStorage.getItem("fairbook.apiKey") || "", account: null,
  book: { bids: new Map(), asks: new Map(), seq: null }, bookDirty: false,
  trades: [], tradeSeq: null, openOrders: new Map(), side: "buy", subscribed: [],
  balances: new Map(), // "partition:asset" -> {partition, asset, available, locked}
};

// -- decimal strings -------------------------------------------------------------------------
function decimals(step) { const i = step.indexOf("."); return i < 0 ? 0 : step.length - i - 1; }
function toUnits(text, scale) {
  const [i, f = ""] = text.split(".");
  return BigInt(i + (f + "0".repeat(scale)).slice(0, scale));
}
function fromUnits(units, scale) {
  const neg = units < 0n; let s = (neg ? -units : units).toString().padStart(scale + 1, "0");
  if (scale) s = s.slice(0, -scale) + "." + s.slice(-scale);
  return (neg ? "-" : "") + s;
}
function subDec(a, b, scale) { return fromUnits(toUnits(a, scale) - toUnits(b, scale), scale); }
function addDec(a, b, scale) { return fromUnits(toUnits(a, scale) + toUnits(b, scale), scale); }
function trimZeros(text) { return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text; }
// a decimal string as a whole number of `step`s (null: not a positive multiple of it)
function steps(text, step) {
  if (!/^[0-9]{1,18}(\.[0-9]{1,18})?$/.test(text)) return null;
  const scale = Math.max(decimals(text), decimals(step));
  const v = toUnits(text, scale), s = toUnits(step, scale);
  return s > 0n && v > 0n && v % s === 0n ? v / s : null;
}
function ceilDiv(a, b) { return a >= 0n ? (a + b - 1n) / b : -((-a) / b); } // b > 0
function cmpDec(a, b) { const s = Math.max(decimals(a), decimals(b)); const x = toUnits(a, s), y = toUnits(b, s); return x < y ? -1 : x > y ? 1 : 0; }
function cmpPrice(a, b) { const s = Math.max(decimals(a), decimals(b)); const x = toUnits(a, s), y = toUnits(b, s); return x < y ? -1 : x > y ? 1 : 0; }
function market() { return state.markets[state.symbol]; }
function qtyScale() { return decimals(market().lot_size); }
function priceScale() { return decimals(market().tick_size); }
function fmtTime(ms) { const d = new Date(Number(ms)); return d.toTimeString().slice(0, 8); }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }

// -- REST ------------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null; try { data = await res.json(); } catch (_) { /* empty body */ }
  if (!res.ok) { const e = (data && data.error) || {}; throw new Error(`${e.code || res.status}: ${e.message || res.statusText}`); }
  return data;
}

// -- connection --------------------------------------------------------------------------------
function setConn(s, text) { const c = $("conn-state"); c.dataset.state = s; c.querySelector("span").textContent = text; }
function send(msg) { if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg)); }
function publicChannels() { return [`book:${state.symbol}:${DEPTH}`, `trades:${state.symbol}`, `bbo:${state.symbol}`]; }

function connect() {
  clearTimeout(state.retryTimer);
  setConn("connecting", "connecting…");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => {
    state.backoff = 500; state.lastMessage = Date.now();
    setConn("live", "live");
    state.subscribed = publicChannels();
    send({ op: "subscribe", channels: state.subscribed });
    if (state.apiKey) send({ op: "auth", api_key: state.apiKey });
    loadTrades();
  };
  ws.onmessage = (ev) => { state.lastMessage = Date.now(); onMessage(JSON.parse(ev.data)); };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    const wait = Math.min(state.backoff, 10000) * (0.8 + Math.random() * 0.4);
    state.backoff = Math.min(state.backoff * 2, 10000);
    setConn("down", `reconnecting in ${(wait / 1000).toFixed(1)}s`);
    state.retryTimer = setTimeout(connect, wait);
  };
  ws.onerror = () => ws.close();
}
// client heartbeat: ping when quiet, reconnect when the server stops answering
setInterval(() => {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const idle = Date.now() - state.lastMessage;
  if (idle > 45000) state.ws.close(); else if (idle > 15000) send({ op: "ping" });
}, 5000);

function resubscribe(channel) { send({ op: "subscribe", channels: [channel] }); }

function onMessage(m) {
  if (m.type === "error") { showResult(`${m.code}: ${m.message}`, true); if (m.code === "unauthorized") $("account").textContent = "bad key"; return; }
  if (m.type === "authenticated") { state.account = m.account; $("account").textContent = `account ${m.account}`; send({ op: "subscribe", channels: ["orders"] }); loadOrders(); loadBalances(); return; }
  if (m.type === "subscribed" || m.type === "unsubscribed" || m.type === "pong") return;
  const ch = m.channel || "";
  if (m.type === "resync") {
    if (ch === "orders") { loadOrders(); loadBalances(); }
    else if (ch.startsWith("trades:")) loadTrades();
    return; // book and bbo: a fresh snapshot follows
  }
  if (ch.startsWith("book:")) { if (ch.split(":")[1] === state.symbol) onBook(m, ch); }
  else if (ch.startsWith("bbo:")) { if (ch.slice(4) === state.symbol) onBbo(m); }
  else if (ch.startsWith("trades:")) { if (ch.slice(7) === state.symbol) onTrade(m); }
  else if (ch === "orders") onPrivate(m);
}

// -- book --------------------------------------------------------------------------------------
function onBook(m, ch) {
  const b = state.book;
  if (m.type === "snapshot") {
    b.bids = new Map(m.bids); b.asks = new Map(m.asks); b.seq = m.sequence;
  } else if (m.type === "update") {
    if (b.seq === null || m.prev_sequence !== b.seq) { b.seq = null; resubscribe(ch); return; } // gap
    for (const [p, q] of m.bids) { if (q === "0" || /^0*\.?0*$/.test(q)) b.bids.delete(p); else b.bids.set(p, q); }
    for (const [p, q] of m.asks) { if (q === "0" || /^0*\.?0*$/.test(q)) b.asks.delete(p); else b.asks.set(p, q); }
    b.seq = m.sequence;
  }
  scheduleBook();
}
function scheduleBook() { if (!state.bookDirty) { state.bookDirty = true; requestAnimationFrame(renderBook); } }
function renderBook() {
  state.bookDirty = false;
  if (!market()) return;
  const qs = qtyScale();
  const bids = [...state.book.bids].sort((a, b) => cmpPrice(b[0], a[0])).slice(0, DEPTH);
  const asks = [...state.book.asks].sort((a, b) => cmpPrice(a[0], b[0])).slice(0, DEPTH);
  const cum = (levels) => { let t = 0n; return levels.map(([p, q]) => { t += toUnits(q, qs); return [p, q, t]; }); };
  const cb = cum(bids), ca = cum(asks);
  const max = [cb.at(-1), ca.at(-1)].filter(Boolean).reduce((m, x) => (x[2] > m ? x[2] : m), 1n);
  const rows = (levels) => levels.map(([p, q, t]) => {
    const r = el("div", "lvl"); r.dataset.price = p;
    const bar = el("div", "bar"); bar.style.width = `${Number((t * 1000n) / max) / 10}%`;
    r.append(bar, el("span", "", p), el("span", "", q), el("span", "", fromUnits(t, qs)));
    return r;
  });
  $("book-asks").replaceChildren(...rows(ca).reverse());
  $("book-bids").replaceChildren(...rows(cb));
  $("book-seq").textContent = state.book.seq === null ? "" : `seq ${state.book.seq}`;
}

function onBbo(m) {
  $("bbo-bid").textContent = m.bid_price ? `${m.bid_price} × ${m.bid_qty}` : "—";
  $("bbo-ask").textContent = m.ask_price ? `${m.ask_price} × ${m.ask_qty}` : "—";
  if (m.bid_price && m.ask_price) {
    const spread = subDec(m.ask_price, m.bid_price, priceScale());
    $("bbo-spread").textContent = spread;
    $("mid-spread").textContent = `spread ${spread}`;
  } else { $("bbo-spread").textContent = "—"; $("mid-spread").textContent = ""; }
}

// -- trades ------------------------------------------------------------------------------------
function tradeRow(t, fresh) {
  const r = el("div", "tr" + (fresh ? " new" : "")); r.dataset.tradeId = t.trade_id;
  r.append(el("span", t.aggressor_side === "buy" ? "buy" : "sell", t.price), el("span", "", t.quantity), el("span", "", fmtTime(t.timestamp)));
  return r;
}
function setLast(t) { const lp = $("last-price"); lp.textContent = t.price; lp.className = "num " + (t.aggressor_side === "buy" ? "buy" : "sell"); $("mid-price").textContent = t.price; $("mid-price").className = lp.className; }
async function loadTrades() {
  const sym = state.symbol;
  try {
    const rows = await api("GET", `/api/v1/trades/${sym}?limit=60`);
    if (sym !== state.symbol) return;
    state.trades = rows; state.tradeSeq = rows.length ? rows[0].trade_id : null;
    $("trades").replaceChildren(...rows.map((t) => tradeRow(t, false)));
    if (rows.length) setLast(rows[0]); else { $("last-price").textContent = "—"; $("mid-price").textContent = "—"; }
  } catch (e) { /* the socket keeps the tape going */ }
}
// -- candles and the 24 h ticker (GET /api/v1/klines, /api/v1/ticker; redrawn at most once a second)
const CANDLES = 60;
async function loadCandles() {
  const sym = state.symbol, interval = $("interval").value;
  try {
    const rows = await api("GET", `/api/v1/klines/${sym}?interval=${interval}&limit=${CANDLES}`);
    if (sym === state.symbol) drawCandles(rows);
  } catch (e) { /* keep the last chart */ }
  try {
    const t = await api("GET", `/api/v1/ticker/${sym}`);
    if (sym !== state.symbol) return;
    const c = $("change-24h");
    c.textContent = t.last === null || t.last === undefined ? "—" : `${t.price_change} (${t.price_change_percent}%)`;
    c.className = "num " + (String(t.price_change).startsWith("-") ? "sell" : "buy");
    $("volume-24h").textContent = `${trimZeros(t.volume)} ${market().base_asset}`;
  } catch (e) { /* no ticker yet */ }
}
function scheduleCandles() {
  if (state.candleTimer) return;
  state.candleTimer = setTimeout(() => { state.candleTimer = null; loadCandles(); }, 1000);
}
function drawCandles(rows) {
  const cv = $("candles"), ctx = cv.getContext("2d");
  const w = cv.clientWidth || cv.width, h = cv.clientHeight || cv.height;
  cv.width = w; cv.height = h; ctx.clearRect(0, 0, w, h);
  cv.dataset.candles = String(rows.length);
  if (!rows.length) return;
  // prices to integer ticks (BigInt): only pixel positions become floating point
  const s = priceScale();
  const hi = rows.reduce((m, k) => { const v = toUnits(k.high, s); return v > m ? v : m; }, toUnits(rows[0].high, s));
  const lo = rows.reduce((m, k) => { const v = toUnits(k.low, s); return v < m ? v : m; }, toUnits(rows[0].low, s));
  const span = hi > lo ? hi - lo : 1n, pad = 6;
  const y = (p) => pad + Number(((hi - toUnits(p, s)) * 10000n) / span) / 10000 * (h - 2 * pad);
  const step = w / CANDLES, body = Math.max(1, step * 0.6);
  rows.forEach((k, i) => {
    const x = (CANDLES - rows.length + i) * step + step / 2;
    const up = cmpPrice(k.close, k.open) >= 0;
    ctx.strokeStyle = ctx.fillStyle = up ? "#2ebd85" : "#f6465d";
    ctx.beginPath(); ctx.moveTo(x, y(k.high)); ctx.lineTo(x, y(k.low)); ctx.stroke();
    const top = y(up ? k.close : k.open), bottom = y(up ? k.open : k.close);
    ctx.fillRect(x - body / 2, top, body, Math.max(1, bottom - top));
  });
}

function onTrade(m) {
  const t = m.data;
  scheduleCandles();
  if (state.tradeSeq !== null && m.sequence <= state.tradeSeq) return; // already loaded via REST
  state.tradeSeq = m.sequence;
  const box = $("trades"); box.prepend(tradeRow(t, true));
  while (box.children.length > 60) box.lastChild.remove();
  setLast(t);
}

// -- private -----------------------------------------------------------------------------------
const OPEN = new Set(["new", "partially_filled", "triggered"]);
function onPrivate(m) {
  const d = m.data;
  if (m.type === "order") {
    if (OPEN.has(d.status)) state.openOrders.set(String(d.order_id), d); else state.openOrders.delete(String(d.order_id));
    renderOrders();
  } else if (m.type === "balance") {
    setBalance(d.partition ?? 0, d);
    renderBalances();
  } else if (m.type === "fill") {
    const r = el("tr", "new"); r.dataset.tradeId = d.trade_id; r.dataset.orderId = d.order_id;
    r.append(el("td", "", fmtTime(d.timestamp)), el("td", d.side, `${d.side} ${d.symbol}`), el("td", "r", d.price), el("td", "r", d.quantity), el("td", "r", `${d.fee} ${d.fee_asset}`), el("td", "", d.liquidity));
    $("fills").prepend(r);
    while ($("fills").children.length > 100) $("fills").lastChild.remove();
  }
}
async function loadOrders() {
  if (!state.apiKey) { state.openOrders.clear(); renderOrders(); return; }
  try {
    const rows = await api("GET", "/api/v1/orders?status=open");
    state.openOrders = new Map(rows.map((o) => [String(o.order_id), o]));
    renderOrders();
  } catch (e) { showResult(String(e.message), true); }
}
function renderOrders() {
  const rows = [...state.openOrders.values()].sort((a, b) => b.order_id - a.order_id).map((o) => {
    const r = el("tr"); r.dataset.orderId = o.order_id;
    const btn = el("button", "cancel", "Cancel"); btn.onclick = () => cancelOrder(o.order_id, btn);
    const td = el("td"); td.append(btn);
    r.append(el("td", "", fmtTime(o.created_at)), el("td", o.side, `${o.side} ${o.symbol}`), el("td", "", o.type.replace("_", " ")),
      el("td", "r", o.price ?? "market"), el("td", "r", o.quantity ?? o.quote_quantity ?? ""), el("td", "r", o.filled_quantity),
      el("td", "r lock-cell", o.locked === undefined ? "" : `${o.locked} ${o.locked_asset}`), el("td", "", o.status.replace("_", " ")), td);
    return r;
  });
  $("open-orders").replaceChildren(...rows);
  $("open-count").textContent = String(rows.length);
  $("orders-empty").classList.toggle("hidden", rows.length > 0);
  $("orders-empty").textContent = state.apiKey ? "No open orders." : "Connect an API key to see your orders.";
}

// -- balances --------------------------------------------------------------------------------
function setBalance(partition, b) {
  state.balances.set(`${partition}:${b.asset}`, { partition, asset: b.asset, available: b.available, locked: b.locked });
}
function balanceOf(asset, partition = 0) { return state.balances.get(`${partition}:${asset}`); }
async function loadBalances() {
  if (!state.apiKey) { state.balances.clear(); renderBalances(); return; }
  try {
    const rows = await api("GET", "/api/v1/balances");
    for (const key of [...state.balances.keys()]) if (key.startsWith("0:")) state.balances.delete(key);
    for (const b of rows) setBalance(0, b);
    renderBalances();
  } catch (e) { showResult(String(e.message), true); }
}
function renderBalances() {
  const rows = [...state.balances.values()].sort((a, b) => a.partition - b.partition || (a.asset < b.asset ? -1 : 1)).map((b) => {
    const r = el("tr"); r.dataset.asset = b.asset; r.dataset.partition = b.partition;
    r.append(el("td", "asset", b.partition ? `${b.asset} (p${b.partition})` : b.asset), el("td", "r available", b.available), el("td", "r locked", b.locked));
    return r;
  });
  $("balances").replaceChildren(...rows);
  $("balances-empty").classList.toggle("hidden", rows.length > 0);
  $("balances-empty").textContent = state.apiKey ? "No balances yet: an operator deposits funds." : "Connect an API key to see your balances.";
  estimateLock();
}

async function cancelOrder(id, btn) {
  btn.disabled = true;
  try { const o = await api("DELETE", `/api/v1/orders/${id}`); showResult(`order ${id} ${o.status || "cancel accepted"}`, false); if (o.status && !OPEN.has(o.status)) { state.openOrders.delete(String(id)); renderOrders(); } }
  catch (e) { showResult(String(e.message), true); btn.disabled = false; }
}

// -- order ticket ------------------------------------------------------------------------------
function showResult(text, err) { const r = $("order-result"); r.textContent = text; r.className = "result " + (err ? "err" : "ok"); }
function setSide(side) {
  state.side = side;
  $("side-buy").classList.toggle("active", side === "buy"); $("side-sell").classList.toggle("active", side === "sell");
  const s = $("submit"); s.className = `submit ${side}`; s.textContent = `${side === "buy" ? "Buy" : "Sell"} ${market() ? market().base_asset : ""}`;
  estimateLock();
}
function syncTicket() {
  const t = $("type").value;
  $("price-row").style.display = t === "market" || t === "stop_loss" ? "none" : "";
  $("stop-row").style.display = t.startsWith("stop") ? "" : "none";
  estimateLock();
}
// What the order will lock at entry, by the engine's rule: a sell its quantity of the base; a buy
// with a price P (the limit, or a stop market's stop price) quantity x P plus the taker fee of
// each lot alone at P, rounded up to the quote atom; a market buy all the available quote.
function lockEstimate() {
  const m = market(); if (!m) return null;
  const type = $("type").value;
  const lots = steps($("quantity").value.trim(), m.lot_size);
  if (lots === null) return null;
  if (state.side === "sell") {
    const lotScale = decimals(m.lot_size);
    return { asset: m.base_asset, amount: fromUnits(lots * toUnits(m.lot_size, lotScale), lotScale) };
  }
  if (type === "market") return { asset: m.quote_asset, amount: null };
  const ticks = steps($(type === "stop_loss" ? "stop-price" : "price").value.trim(), m.tick_size);
  if (ticks === null) return null;
  const rateScale = decimals(m.taker_fee_rate);
  const fee1 = ceilDiv(ticks * toUnits(m.taker_fee_rate, rateScale), 10n ** BigInt(rateScale));
  return { asset: m.quote_asset, amount: fromUnits(lots * (ticks + fee1), decimals(m.tick_size) + decimals(m.lot_size)) };
}
function estimateLock() {
  const out = $("order-lock"); const est = lockEstimate();
  out.className = "lock";
  if (est === null) { out.textContent = ""; return; }
  const bal = balanceOf(est.asset);
  const have = bal ? bal.available : "0";
  if (est.amount === null) { out.textContent = `Locks all available ${est.asset} while it fills (${trimZeros(have)}); the rest is released`; return; }
  const short = state.apiKey && cmpDec(est.amount, have) > 0;
  out.textContent = `Locks ${trimZeros(est.amount)} ${est.asset}` + (state.apiKey ? ` · available ${trimZeros(have)}` : "") + (short ? " · not enough" : "");
  out.dataset.amount = trimZeros(est.amount); out.dataset.asset = est.asset;
  if (short) out.classList.add("short");
}
async function submitOrder(ev) {
  ev.preventDefault();
  if (!state.apiKey) { showResult("enter your API key first", true); return; }
  const type = $("type").value;
  const body = { symbol: state.symbol, side: state.side, type, quantity: $("quantity").value.trim() };
  if (type !== "market" && type !== "stop_loss") body.price = $("price").value.trim();
  if (type.startsWith("stop")) body.stop_price = $("stop-price").value.trim();
  if (type !== "market" && type !== "stop_loss") { body.time_in_force = $("tif").value; body.post_only = $("post-only").checked; }
  const btn = $("submit"); btn.disabled = true;
  try {
    const o = await api("POST", "/api/v1/orders", body);
    if (o.status === "rejected") showResult(`rejected: ${o.reject_reason}`, true);
    else showResult(`order ${o.order_id} ${o.status}${o.filled_quantity && !/^0*\.?0*$/.test(o.filled_quantity) ? ` · filled ${o.filled_quantity}` : ""}`, false);
    if (o.status && OPEN.has(o.status)) { state.openOrders.set(String(o.order_id), o); renderOrders(); }
  } catch (e) { showResult(String(e.message), true); }
  finally { btn.disabled = false; }
}

// -- symbols -----------------------------------------------------------------------------------
function selectSymbol(sym) {
  const old = state.subscribed;
  state.symbol = sym;
  const m = market();
  document.querySelectorAll(".quote-unit").forEach((e) => (e.textContent = m.quote_asset));
  document.querySelectorAll(".base-unit").forEach((e) => (e.textContent = m.base_asset));
  $("price").placeholder = m.tick_size; $("quantity").placeholder = m.lot_size; $("stop-price").placeholder = m.tick_size;
  $("rules").textContent = `tick ${m.tick_size} · lot ${m.lot_size} · min notional ${m.min_notional} · maker ${m.maker_fee_rate} · taker ${m.taker_fee_rate}`;
  state.book = { bids: new Map(), asks: new Map(), seq: null }; scheduleBook();
  state.tradeSeq = null; $("trades").replaceChildren();
  onBbo({});
  setSide(state.side);
  estimateLock();
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    if (old.length) send({ op: "unsubscribe", channels: old });
    state.subscribed = publicChannels();
    send({ op: "subscribe", channels: state.subscribed });
    loadTrades();
  }
  loadCandles();
  history.replaceState(null, "", `#${sym}`);
}

async function main() {
  // the key lives in this tab's sessionStorage only; drop the copy older pages left behind
  try { localStorage.removeItem("fairbook.apiKey"); } catch (e) { /* storage disabled */ }
  $("api-key").value = state.apiKey;
  $("side-buy").onclick = () => setSide("buy"); $("side-sell").onclick = () => setSide("sell");
  $("type").onchange = syncTicket; syncTicket();
  for (const id of ["price", "quantity", "stop-price"]) $(id).addEventListener("input", estimateLock);
  $("order-form").onsubmit = submitOrder;
  $("symbol").onchange = () => selectSymbol($("symbol").value);
  $("interval").onchange = loadCandles;
  $("cancel-all").onclick = async () => { try { const r = await api("DELETE", `/api/v1/orders?symbol=${state.symbol}`); showResult(`cancelled ${(r.cancelled || []).length}`, false); loadOrders(); } catch (e) { showResult(String(e.message), true); } };
  $("key-form").onsubmit = (ev) => {
    ev.preventDefault();
    state.apiKey = $("api-key").value.trim(); state.account = null;
    if (state.apiKey) sessionStorage.setItem("fairbook.apiKey", state.apiKey); else sessionStorage.removeItem("fairbook.apiKey");
    $("account").textContent = "";
    if (state.ws) state.ws.close(); // reconnect: a socket is bound to one account
    state.openOrders.clear(); renderOrders(); $("fills").replaceChildren();
    state.balances.clear(); renderBalances();
  };
  renderOrders(); renderBalances();
  for (;;) {
    try { state.symbols = await api("GET", "/api/v1/symbols"); break; }
    catch (e) { setConn("down", "server unreachable"); await new Promise((r) => setTimeout(r, 2000)); }
  }
  for (const m of state.symbols) { state.markets[m.symbol] = m; $("symbol").append(new Option(m.symbol, m.symbol)); }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.markets[wanted] ? wanted : state.symbols[0].symbol;
  $("symbol").value = first;
  selectSymbol(first);
  connect();
}
main();
