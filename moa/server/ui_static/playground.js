// The moa playground: chats with one ensemble of this server through its public API (/v1/models, and
// /v1/chat/completions streamed with moa's progress and panel chunks) and shows every call behind each answer.
// Model text is only ever inserted as text (textContent), never as HTML.
"use strict";

(() => {
  const KEY = "moa-playground-api-key"; // sessionStorage: this tab only
  const $ = (id) => document.getElementById(id);
  const conversation = []; // the chat so far, as sent to the server
  let turn = null; // what the current (or last) answer's calls have reported

  // ---- small helpers ---------------------------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function requestHeaders(json) {
    const headers = {};
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  function showError(message) {
    $("error").textContent = message || "";
    $("error").hidden = !message;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
    } catch (ignored) {
      // not an OpenAI error body: fall back to the status line
    }
    return `${response.status} ${response.statusText}`;
  }

  function dollars(value) {
    if (value === null || value === undefined) return "cost unknown";
    return `$${value < 0.01 ? value.toPrecision(2) : value.toFixed(4)}`;
  }

  function seconds(value) {
    return `${value.toFixed(2)} s`;
  }

  // ---- ensembles and the API key ----------------------------------------------------------------------

  async function loadEnsembles() {
    let response;
    try {
      response = await fetch("/v1/models", { headers: requestHeaders(false) });
    } catch (failure) {
      showError(`the server cannot be reached: ${failure.message}`);
      return;
    }
    if (response.status === 401) {
      $("key-form").hidden = false;
      showError(await errorMessage(response));
      $("key").focus();
      return;
    }
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    const body = await response.json();
    const select = $("ensemble");
    select.replaceChildren();
    for (const model of body.data) {
      const option = element("option", "", model.id);
      option.value = model.id;
      option.dataset.description = model.description || "";
      select.append(option);
    }
    describeEnsemble();
    $("key-form").hidden = true;
    showError("");
    $("send").disabled = false;
  }

  function describeEnsemble() {
    const option = $("ensemble").selectedOptions[0];
    $("description").textContent = option ? option.dataset.description : "";
  }

  // ---- the conversation -------------------------------------------------------------------------------

  function renderConversation() {
    const list = $("conversation");
    list.replaceChildren();
    for (const message of conversation) {
      const item = element("li", message.role);
      item.append(element("span", "role", message.role), document.createTextNode(message.content));
      list.append(item);
    }
  }

  function newTurn() {
    turn = { calls: new Map(), cards: new Map(), clock: 0, answer: "", toolCalls: [], started: performance.now() };
    $("cards").replaceChildren();
    $("timeline").replaceChildren();
    $("answer-text").textContent = "";
    $("answer-meta").textContent = "";
    $("cost").textContent = "";
  }

  // ---- proposer cards ---------------------------------------------------------------------------------

  function cardFor(layer, agent, model) {
    const key = `${layer}/${agent}`;
    let entry = turn.cards.get(key);
    if (!entry) {
      entry = { cards: [], filled: 0 };
      turn.cards.set(key, entry);
    }
    if (entry.cards.length === 0 || entry.filled === entry.cards.length) {
      const card = element("article", "card running");
      const head = element("header", "card-head");
      const suffix = entry.cards.length ? ` #${entry.cards.length + 1}` : "";
      head.append(element("span", "who", `L${layer} ${agent}${suffix}`), element("span", "meta", model));
      card.append(head, element("div", "text", "waiting for its answer..."));
      card.dataset.layer = String(layer);
      card.dataset.agent = agent;
      $("cards").append(card);
      entry.cards.push(card);
    }
    return { entry, card: entry.cards[entry.filled] };
  }

  function onProposal(proposal) {
    if (proposal.index !== 0) return;
    // an n-sample call started as one agent ("L1.1:model"); its proposals come as "L1.1:model#1", "#2", ...
    const started = proposal.agent.replace(/#\d+$/, "");
    const own = turn.cards.has(`${proposal.layer}/${proposal.agent}`);
    const { entry, card } = cardFor(proposal.layer, own ? proposal.agent : started, proposal.model);
    entry.filled += 1;
    card.classList.remove("running");
    card.querySelector(".who").textContent = `L${proposal.layer} ${proposal.agent}`;
    card.querySelector(".text").textContent = proposal.text;
    const figures = [
      proposal.model,
      `${proposal.completion_tokens} tokens`,
      seconds(proposal.latency_s),
      dollars(proposal.cost_usd),
    ];
    if (proposal.samples > 1) figures.push(`one of ${proposal.samples} samples`);
    if (proposal.dropped) {
      card.classList.add("dropped");
      figures.push(`dropped: ${proposal.reason || "no reason given"}`);
    }
    card.querySelector(".meta").textContent = figures.join(" · ");
  }

  // ---- calls and the timeline -------------------------------------------------------------------------

  function onProgress(event) {
    if (event.index !== 0) return;
    turn.clock = Math.max(turn.clock, event.elapsed_s);
    if (event.kind === "layer_done" || event.kind === "proposal") return;
    let call = turn.calls.get(event.call);
    if (!call) {
      call = { ...event, start: event.elapsed_s, first: null, end: null, outcome: "running", cost: null };
      turn.calls.set(event.call, call);
      if (event.role === "proposer") cardFor(event.layer, event.agent, event.model);
      if (event.role === "aggregator") $("answer-meta").textContent = `${event.model} · running`;
    }
    call.tokens = event.tokens;
    if (event.kind === "first_token") call.first = event.elapsed_s;
    if (event.kind === "finished" || event.kind === "failed" || event.kind === "cancelled") {
      call.end = event.elapsed_s;
      call.outcome = event.kind === "finished" ? "ok" : event.kind;
      call.error = event.error;
      if (event.kind === "failed" && event.role === "proposer") markFailed(call);
    }
    renderTimeline();
  }

  function markFailed(call) {
    const entry = turn.cards.get(`${call.layer}/${call.agent}`);
    if (!entry) return;
    for (const card of entry.cards.slice(entry.filled)) {
      card.classList.remove("running");
      card.classList.add("failed");
      card.querySelector(".text").textContent = `failed: ${call.error || "no answer"}`;
    }
  }

  function renderTimeline() {
    const calls = [...turn.calls.values()];
    const span = Math.max(turn.clock, ...calls.map((c) => c.end || 0), 0.001);
    const rows = calls.map((call) => {
      const end = call.end === null ? turn.clock : call.end;
      const row = element("div", "row");
      const who = call.role === "aggregator" ? "aggregator" : call.agent;
      const label = element("span", "label", `L${call.layer} ${who} (${call.model})`);
      label.title = label.textContent;
      const track = element("div", "track");
      const bar = element("div", `bar ${call.role} ${call.outcome}`);
      bar.style.left = `${(100 * call.start) / span}%`;
      bar.style.width = `${(100 * Math.max(end - call.start, 0)) / span}%`;
      if (call.first !== null && end > call.start) {
        const mark = element("span", "first-token");
        mark.style.left = `${(100 * (call.first - call.start)) / (end - call.start)}%`;
        bar.append(mark);
      }
      track.append(bar);
      const figures = [call.outcome, seconds(end - call.start)];
      if (call.first !== null) figures.push(`first token ${seconds(call.first - call.start)}`);
      figures.push(`${call.tokens} tokens`);
      if (call.cost !== null) figures.push(dollars(call.cost));
      if (call.error) figures.push(call.error);
      row.append(label, track, element("span", "figures", figures.join(" · ")));
      return row;
    });
    $("timeline").replaceChildren(...rows);
  }

  // ---- the answer -------------------------------------------------------------------------------------

  // the answer so far: its text, then each tool call written out
  function answerText() {
    const calls = turn.toolCalls.map((c) => `${c.name}(${c.arguments})`);
    return [turn.answer, ...calls].filter(Boolean).join("\n");
  }

  function onChunk(chunk) {
    for (const choice of chunk.choices || []) {
      if (choice.index !== 0) continue;
      const delta = choice.delta || {};
      if (delta.content) turn.answer += delta.content;
      for (const piece of delta.tool_calls || []) {
        const call = (turn.toolCalls[piece.index] ||= { name: "", arguments: "" });
        if (piece.function && piece.function.name) call.name += piece.function.name;
        if (piece.function && piece.function.arguments) call.arguments += piece.function.arguments;
      }
      $("answer-text").textContent = answerText();
      if (choice.finish_reason) turn.finish = choice.finish_reason;
    }
    if (chunk.moa_trace) onTrace(chunk.moa_trace);
    if (chunk.usage) onUsage(chunk.usage);
  }

  function onTrace(trace) {
    const entry = trace.find((t) => t.index === 0);
    if (!entry) return;
    const unused = [...entry.calls];
    for (const call of [...turn.calls.values()].sort((a, b) => a.call - b.call)) {
      const at = unused.findIndex((r) => r.layer === call.layer && r.role === call.role && r.agent === call.agent);
      if (at < 0) continue;
      call.cost = unused[at].cost_usd;
      unused.splice(at, 1);
    }
    renderTimeline();
    const aggregator = [...turn.calls.values()].filter((c) => c.role === "aggregator").pop();
    if (aggregator) {
      const figures = [aggregator.model, `${aggregator.tokens} tokens`, seconds((aggregator.end || 0) - aggregator.start)];
      figures.push(dollars(aggregator.cost));
      if (turn.finish) figures.push(`finish: ${turn.finish}`);
      $("answer-meta").textContent = figures.join(" · ");
    }
  }

  function onUsage(usage) {
    const calls = turn.calls.size;
    const total = usage.cost === undefined ? "cost unknown (the config has no prices)" : dollars(usage.cost);
    $("cost").textContent =
      `the answer: ${total} for ${calls} call${calls === 1 ? "" : "s"}, ` +
      `${usage.prompt_tokens} prompt and ${usage.completion_tokens} completion tokens in all`;
  }

  async function* serverSentEvents(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  }

  async function ask(text) {
    conversation.push({ role: "user", content: text });
    renderConversation();
    newTurn();
    showError("");
    setStatus("asking...");
    const body = {
      model: $("ensemble").value,
      messages: conversation,
      stream: true,
      stream_options: { include_usage: true, include_progress: true },
      moa_include_proposals: true,
      moa_trace: true,
    };
    let failed = null;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: requestHeaders(true),
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        failed = await errorMessage(response);
        if (response.status === 401) $("key-form").hidden = false;
      } else {
        for await (const data of serverSentEvents(response)) {
          if (data === "[DONE]") break;
          const chunk = JSON.parse(data);
          if (chunk.error) failed = chunk.error.message;
          else if (chunk.object === "moa.progress") onProgress(chunk.moa_progress);
          else if (chunk.object === "moa.proposal") onProposal(chunk.moa_proposal);
          else onChunk(chunk);
        }
      }
    } catch (failure) {
      failed = `the request failed: ${failure.message}`;
    }
    const took = seconds((performance.now() - turn.started) / 1000);
    if (failed) {
      conversation.pop(); // the question can be sent again
      renderConversation();
      $("prompt").value = text;
      showError(failed);
      setStatus(`failed after ${took}`);
      return;
    }
    conversation.push({ role: "assistant", content: answerText() });
    renderConversation();
    setStatus(`answered in ${took}`);
  }

  // ---- wiring -----------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("send").disabled = true;
    $("ensemble").addEventListener("change", describeEnsemble);
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("key").value);
      $("key").value = "";
      loadEnsembles();
    });
    $("ask").addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = $("prompt").value.trim();
      if (!text || $("send").disabled) return;
      $("prompt").value = "";
      $("send").disabled = true;
      try {
        await ask(text);
      } finally {
        $("send").disabled = false;
      }
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("ask").requestSubmit();
      }
    });
    $("new-chat").addEventListener("click", () => {
      conversation.length = 0;
      renderConversation();
      newTurn();
      setStatus("");
    });
    newTurn();
    loadEnsembles();
  });
})();
