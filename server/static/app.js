/* MiniGPT web chat: streams /v1/chat/completions (fetch + ReadableStream, SSE `data:` lines), shows reasoning,
 * runs the built-in tools the model calls (POST /web/tools/call) and continues the turn. No framework, no build
 * step, nothing loaded from elsewhere. The conversation lives in memory and in localStorage; model text is only
 * ever inserted as textContent. It is not an SDK: it speaks just the parts of the API the page needs. */
"use strict";

(() => {
  const MAX_TOOL_ROUNDS = 4;
  const STORE = { chat: "minigpt.chat.v1", settings: "minigpt.settings.v1", key: "minigpt.apiKey" };
  const DEFAULTS = { temperature: 0.7, top_p: 0.95, max_tokens: 256, think: false, tools: [], extra: {} };
  const FIXED_FIELDS = ["model", "messages", "stream", "stream_options", "tools"];
  const WIRE_ROLES = new Set(["system", "user", "assistant", "tool"]);
  const $ = (id) => document.getElementById(id);

  const state = {
    model: null,
    messages: load(STORE.chat, []),
    settings: { ...DEFAULTS, ...load(STORE.settings, {}) },
    apiKey: loadText(STORE.key),
    tools: [],
    controller: null,
  };
  const views = new WeakMap(); // message -> its DOM nodes

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  // --- storage --------------------------------------------------------------------------------------------
  function load(key, fallback) {
    try { const raw = localStorage.getItem(key); return raw ? JSON.parse(raw) : fallback; } catch { return fallback; }
  }
  function loadText(key) { try { return localStorage.getItem(key) || ""; } catch { return ""; } }
  function store(key, value) {
    try { localStorage.setItem(key, typeof value === "string" ? value : JSON.stringify(value)); } catch { /* full */ }
  }
  const saveChat = () => store(STORE.chat, state.messages);
  const saveSettings = () => store(STORE.settings, state.settings);

  // --- HTTP -----------------------------------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json" };
    if (state.apiKey) h.Authorization = `Bearer ${state.apiKey}`;
    return h;
  }

  async function apiError(resp) {
    let message = `HTTP ${resp.status}`;
    try { message = (await resp.json()).error.message || message; } catch { /* not an envelope */ }
    if (resp.status === 401) showKey(true, message);
    return new ApiError(message, resp.status);
  }

  async function getJson(path) {
    const resp = await fetch(path, { headers: headers() });
    if (!resp.ok) throw await apiError(resp);
    return resp.json();
  }

  // One SSE event's data per yield (multi-line data joined with "\n"), until the stream ends.
  async function* sseData(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let lines = [];
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      const parts = buffer.split(/\r\n|\r|\n/);
      buffer = done ? "" : parts.pop();
      for (const line of parts) {
        if (line === "") {
          if (lines.length) { yield lines.join("\n"); lines = []; }
        } else if (line.startsWith("data:")) {
          lines.push(line.slice(5).replace(/^ /, ""));
        }
      }
      if (done) break;
    }
    if (lines.length) yield lines.join("\n");
  }

  // --- connection, key and tools --------------------------------------------------------------------------
  function showKey(needed, why) {
    $("key-section").hidden = !needed && !state.apiKey;
    if (needed) {
      $("key-hint").textContent = why ? `${why} The key stays in this browser.` : "This server needs an API key.";
      setStatus("API key needed", true);
    }
  }

  async function connect() {
    setStatus("Connecting…");
    try {
      const resp = await fetch("/health", { headers: headers() });
      const health = await resp.json().catch(() => ({}));
      if (resp.status === 401 || health.auth_required || health.api_key_required) showKey(true);
      if (health.status && health.status !== "ok") setStatus(`Model ${health.status}`, health.status === "error");
      const models = await getJson("/v1/models");
      state.model = models.data && models.data.length ? models.data[0].id : null;
      $("model-name").textContent = state.model || "no model";
      showKey(false);
      setStatus("Ready");
      renderTools((await getJson("/web/tools")).data || []);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) setStatus(`Cannot reach the server: ${err.message}`, true);
    }
  }

  function renderTools(schemas) {
    state.tools = schemas;
    const box = $("tools");
    box.replaceChildren(box.querySelector("legend"));
    for (const schema of schemas) {
      const fn = schema.function;
      const label = el("label", "tool-option");
      const input = el("input");
      input.type = "checkbox";
      input.value = fn.name;
      input.checked = state.settings.tools.includes(fn.name);
      input.setAttribute("aria-label", `Offer the ${fn.name} tool`);
      input.addEventListener("change", () => {
        const chosen = new Set(state.settings.tools);
        if (input.checked) chosen.add(fn.name); else chosen.delete(fn.name);
        state.settings.tools = [...chosen];
        saveSettings();
      });
      const text = el("span", "", fn.name);
      text.append(el("small", "", fn.description || ""));
      label.append(input, text);
      box.append(label);
    }
    if (!schemas.length) box.append(el("p", "hint", "No tools on this server."));
  }

  // --- the conversation -----------------------------------------------------------------------------------
  function wireMessages() {
    const out = [];
    for (const m of state.messages) {
      if (!WIRE_ROLES.has(m.role)) continue;
      if (m.role === "assistant") {
        const calls = (m.tool_calls || []).filter((c) => c.function.name);
        if (!m.content && !calls.length) continue;
        const msg = { role: "assistant", content: m.content || null };
        if (calls.length) msg.tool_calls = calls;
        out.push(msg);
      } else if (m.role === "tool") {
        out.push({ role: "tool", content: m.content, tool_call_id: m.tool_call_id, name: m.name });
      } else {
        out.push({ role: m.role, content: m.content });
      }
    }
    return out;
  }

  function requestBody() {
    const s = state.settings;
    const body = {
      model: state.model, messages: wireMessages(), stream: true, stream_options: { include_usage: true },
      temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens, ultra_think: s.think,
    };
    const tools = state.tools.filter((t) => s.tools.includes(t.function.name));
    if (tools.length) { body.tools = tools; body.tool_choice = "auto"; }
    for (const [key, value] of Object.entries(s.extra || {})) if (!FIXED_FIELDS.includes(key)) body[key] = value;
    return body;
  }

  // Stream one assistant answer into `msg`; returns its finish_reason.
  async function streamAnswer(msg, signal) {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal,
    });
    if (!resp.ok) throw await apiError(resp);
    const started = performance.now();
    for await (const data of sseData(resp)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message || "stream error", 500);
      if (chunk.usage) msg.usage = { tokens: chunk.usage.completion_tokens, seconds: (performance.now() - started) / 1000 };
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.reasoning_content) msg.reasoning_content += delta.reasoning_content;
      if (delta.content) msg.content += delta.content;
      for (const call of delta.tool_calls || []) mergeCall(msg, call);
      if (choice.finish_reason) msg.finish_reason = choice.finish_reason;
      updateMessage(msg);
    }
    return msg.finish_reason;
  }

  function mergeCall(msg, call) {
    const slot = (msg.tool_calls[call.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
    if (call.id) slot.id = call.id;
    const fn = call.function || {};
    slot.function.name += fn.name || "";
    slot.function.arguments += fn.arguments || "";
  }

  async function runTool(call) {
    const resp = await fetch("/web/tools/call", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ name: call.function.name, arguments: call.function.arguments || "{}" }),
    });
    if (resp.ok) return (await resp.json()).content;
    return `error: ${(await apiError(resp)).message}`;
  }

  async function runTurn() {
    if (!state.model) await connect();
    if (!state.model) return;
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let msg = null;
    try {
      for (let round = 0; round <= MAX_TOOL_ROUNDS; round++) {
        msg = { role: "assistant", content: "", reasoning_content: "", tool_calls: [], live: true };
        append(msg);
        setStatus(round ? "Continuing with the tool results…" : "Generating…");
        await streamAnswer(msg, controller.signal);
        finishMessage(msg);
        const calls = msg.tool_calls.filter((c) => c && c.function.name);
        if (!calls.length) break;
        if (round === MAX_TOOL_ROUNDS) {
          msg.note = `not run: at most ${MAX_TOOL_ROUNDS} tool rounds per message`;
          updateMessage(msg);
          break;
        }
        for (const call of calls) {
          setStatus(`Running ${call.function.name}…`);
          const content = await runTool(call);
          append({ role: "tool", tool_call_id: call.id, name: call.function.name, content });
        }
      }
      setStatus("Ready");
    } catch (err) {
      if (msg) finishMessage(msg);
      if (err.name === "AbortError") {
        if (msg) { msg.finish_reason = "stopped"; updateMessage(msg); }
        setStatus("Stopped");
      } else {
        if (msg && !msg.content && !msg.reasoning_content && !msg.tool_calls.length) remove(msg);
        append({ role: "error", content: err.message });
        setStatus("Error", true);
      }
    } finally {
      state.controller = null;
      saveChat();
      setBusy(false);
    }
  }

  function finishMessage(msg) {
    delete msg.live;
    msg.tool_calls = msg.tool_calls.filter(Boolean);
    updateMessage(msg);
    saveChat();
  }

  function send() {
    const prompt = $("prompt");
    const text = prompt.value.trim();
    if (!text || state.controller) return;
    prompt.value = "";
    append({ role: "user", content: text });
    saveChat();
    runTurn();
  }

  function regenerate() {
    if (state.controller) return;
    let last = state.messages.length - 1;
    while (last >= 0 && state.messages[last].role !== "user") last--;
    if (last < 0) return;
    state.messages.length = last + 1;
    renderAll();
    runTurn();
  }

  function clearChat() {
    if (state.controller) state.controller.abort();
    state.messages = [];
    saveChat();
    renderAll();
    setStatus(state.model ? "Ready" : "Connecting…");
    $("prompt").focus();
  }

  // --- rendering ------------------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const ROLE_NAMES = { user: "You", assistant: "MiniGPT", tool: "Tool result", error: "Error", system: "System" };

  function renderMessage(msg) {
    const article = el("article", `msg ${msg.role}`);
    const role = el("div", "role", ROLE_NAMES[msg.role] || msg.role);
    const content = el("div", "content");
    article.setAttribute("aria-label", ROLE_NAMES[msg.role] || msg.role);
    const view = { article, role, content, reasoning: null, reasoningText: null, calls: null, meta: el("div", "meta") };
    article.append(role, content, view.meta);
    views.set(msg, view);
    updateMessage(msg);
    return article;
  }

  function updateMessage(msg) {
    const view = views.get(msg);
    if (!view) return;
    const log = $("log");
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    view.article.classList.toggle("streaming", Boolean(msg.live));
    if (msg.role === "tool") {
      view.role.textContent = `Result of ${msg.name || "tool"}`;
      view.content.replaceChildren(el("pre", "", msg.content));
    } else {
      view.content.textContent = msg.content || "";
    }
    if (msg.reasoning_content) updateReasoning(msg, view);
    if (msg.tool_calls && msg.tool_calls.length) updateCalls(msg, view);
    view.meta.textContent = metaText(msg);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function updateReasoning(msg, view) {
    if (!view.reasoning) {
      view.reasoning = el("details", "reasoning");
      view.reasoning.open = Boolean(msg.live);
      view.reasoningSummary = el("summary");
      view.reasoningText = el("div", "reasoning-text");
      view.reasoning.append(view.reasoningSummary, view.reasoningText);
      view.article.insertBefore(view.reasoning, view.content);
    }
    const thinking = msg.live && !msg.content && !(msg.tool_calls || []).length;
    view.reasoningSummary.textContent = thinking ? "Thinking…" : "Reasoning";
    view.reasoningText.textContent = msg.reasoning_content;
  }

  function updateCalls(msg, view) {
    if (!view.calls) {
      view.calls = el("div", "calls");
      view.article.insertBefore(view.calls, view.meta);
    }
    view.calls.replaceChildren(...msg.tool_calls.filter(Boolean).map((call) => {
      const box = el("div", "call");
      box.append(el("span", "call-name", `Tool call: ${call.function.name}`), el("code", "", call.function.arguments));
      return box;
    }));
  }

  function metaText(msg) {
    if (msg.role !== "assistant" || msg.live) return "";
    const parts = [];
    if (msg.note) parts.push(msg.note);
    if (msg.finish_reason === "stopped") parts.push("stopped");
    else if (msg.finish_reason === "length") parts.push("hit the max tokens limit");
    if (msg.usage && msg.usage.tokens) {
      const rate = msg.usage.seconds > 0 ? ` · ${(msg.usage.tokens / msg.usage.seconds).toFixed(1)} tok/s` : "";
      parts.push(`${msg.usage.tokens} tokens${rate}`);
    }
    return parts.join(" · ");
  }

  function append(msg) {
    state.messages.push(msg);
    const log = $("log");
    const empty = log.querySelector(".empty");
    if (empty) empty.remove();
    log.append(renderMessage(msg));
    log.scrollTop = log.scrollHeight;
  }

  function remove(msg) {
    state.messages = state.messages.filter((m) => m !== msg);
    const view = views.get(msg);
    if (view) view.article.remove();
  }

  function renderAll() {
    const log = $("log");
    log.replaceChildren();
    if (!state.messages.length) {
      const empty = el("div", "empty");
      empty.append(el("strong", "", "Ask MiniGPT anything"), el("span", "", "Answers stream in as they are written."));
      log.append(empty);
    }
    for (const msg of state.messages) log.append(renderMessage(msg));
    log.scrollTop = log.scrollHeight;
  }

  function setStatus(text, isError = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function setBusy(busy) {
    const hadFocus = document.activeElement;
    $("send").disabled = busy;
    $("regenerate").disabled = busy;
    $("stop").disabled = !busy;
    $("log").setAttribute("aria-busy", String(busy));
    if (!busy && (hadFocus === $("stop") || hadFocus === document.body)) $("prompt").focus();
  }

  // --- settings form --------------------------------------------------------------------------------------
  function bindSettings() {
    const s = state.settings;
    const bindRange = (id, key) => {
      const input = $(id);
      const out = $(`${id}-value`);
      input.value = String(s[key]);
      out.textContent = Number(s[key]).toFixed(2);
      input.addEventListener("input", () => {
        s[key] = Number(input.value);
        out.textContent = s[key].toFixed(2);
        saveSettings();
      });
    };
    bindRange("temperature", "temperature");
    bindRange("top-p", "top_p");
    const maxTokens = $("max-tokens");
    maxTokens.value = String(s.max_tokens);
    maxTokens.addEventListener("change", () => {
      const n = Math.round(Number(maxTokens.value));
      s.max_tokens = Number.isFinite(n) && n >= 1 ? n : DEFAULTS.max_tokens;
      maxTokens.value = String(s.max_tokens);
      saveSettings();
    });
    const extra = $("extra");
    extra.value = Object.keys(s.extra || {}).length ? JSON.stringify(s.extra) : "";
    extra.addEventListener("change", () => {
      let parsed = {};
      try { parsed = extra.value.trim() ? JSON.parse(extra.value) : {}; } catch { parsed = null; }
      const ok = parsed !== null && typeof parsed === "object" && !Array.isArray(parsed);
      extra.setAttribute("aria-invalid", String(!ok));
      $("extra-hint").textContent = ok ? "Added to each request, e.g. seed, top_k, min_p, stop, ignore_eos."
        : "Not a JSON object: ignored until fixed.";
      if (ok) { s.extra = parsed; saveSettings(); }
    });
    const think = $("think");
    think.checked = Boolean(s.think);
    think.addEventListener("change", () => { s.think = think.checked; saveSettings(); });
    const key = $("api-key");
    key.value = state.apiKey;
    const saveKey = () => { state.apiKey = key.value.trim(); store(STORE.key, state.apiKey); connect(); };
    $("save-key").addEventListener("click", saveKey);
    key.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); saveKey(); } });
  }

  function bindComposer() {
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
    });
    $("stop").addEventListener("click", () => state.controller && state.controller.abort());
    $("regenerate").addEventListener("click", regenerate);
    $("clear").addEventListener("click", clearChat);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.controller) { e.preventDefault(); state.controller.abort(); }
    });
  }

  function init() {
    state.messages = state.messages.filter((m) => m && typeof m.role === "string");
    for (const m of state.messages) delete m.live;
    bindSettings();
    bindComposer();
    showKey(false);
    renderAll();
    setBusy(false);
    $("prompt").focus();
    connect();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
