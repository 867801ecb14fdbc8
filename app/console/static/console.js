// The Memory-R1 console: one page over the service's JSON API, signed in with an API key
// (kept in this tab's sessionStorage, sent as a bearer token). Every view is a hash route, so
// links, the back button and bookmarks work; every string from the API goes in as text.
"use strict";

const KEY = "memory-r1.key";
const SCOPES = "memory-r1.scopes";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const main = () => document.getElementById("main");
let poll = null; // the running view's refresh timer

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const said = body && body.detail ? body.detail : `HTTP ${status}`;
    super(typeof said === "string" ? said : JSON.stringify(said));
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const get = (path) => api("GET", path);
const post = (path, body) => api("POST", path, body);

// -- building the page -----------------------------------------------------------------------

// h("a", {href: "#/x"}, "text", child): an element; strings become text nodes, never HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return h("time", { datetime: iso }, date.toLocaleString());
}

function say(message) {
  document.getElementById("alert").textContent = "";
  document.getElementById("status").textContent = message;
}

function fail(error) {
  document.getElementById("status").textContent = "";
  document.getElementById("alert").textContent =
    error instanceof ApiError ? `${error.message} (HTTP ${error.status})` : String(error);
  if (error instanceof ApiError && error.status === 401) signOut();
}

// A view: a heading that takes focus (screen readers announce the new view) and its content.
function show(title, ...content) {
  document.title = `${title} · Memory-R1 console`;
  const heading = h("h1", { tabindex: "-1" }, title);
  main().replaceChildren(heading, ...content.flat(Infinity).filter((c) => c));
  heading.focus();
}

function table(caption, columns, rows) {
  return h(
    "div",
    { class: "scroll", role: "region", "aria-label": caption, tabindex: "0" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c)))))
    )
  );
}

function badge(text) {
  return h("span", { class: `badge ${String(text).toLowerCase()}` }, text);
}

function section(title, ...content) {
  return h("section", { "aria-label": title }, h("h2", {}, title), ...content);
}

// -- signing in ------------------------------------------------------------------------------

function scopes() {
  return JSON.parse(sessionStorage.getItem(SCOPES) || "[]");
}

async function probe(path) {
  try {
    await get(path);
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return false;
    throw error;
  }
}

async function signIn(event) {
  event.preventDefault();
  const key = event.target.elements.key.value.trim();
  if (!key) return fail("Paste an API key to sign in.");
  sessionStorage.setItem(KEY, key);
  try {
    const found = [];
    if (await probe("/users?limit=1")) found.push("memory");
    if (await probe("/admin/adapters")) found.push("admin");
    if (!found.length) throw new Error("This key has neither the memory nor the admin scope.");
    sessionStorage.setItem(SCOPES, JSON.stringify(found));
    say("Signed in.");
    go(found.includes("memory") ? "#/users" : "#/training");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    fail(error);
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(SCOPES);
  go("#/");
}

// Show the view of ``hash``: a new hash renders through hashchange, the same one directly.
function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function loginView() {
  show(
    "Sign in",
    h(
      "form",
      { onsubmit: signIn, class: "card" },
      h(
        "p",
        {},
        "Use an API key of your tenant (memory scope for users and memories, admin scope for ",
        "training and adapters). It stays in this browser tab only."
      ),
      h("label", { for: "key" }, "API key"),
      h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true }),
      h("button", { type: "submit" }, "Sign in")
    )
  );
}

// -- users and their banks -------------------------------------------------------------------

async function usersView() {
  const list = h("div", {});
  show("Users", list);
  let offset = 0;
  const rows = [];
  const more = h("button", { type: "button", hidden: true, onclick: () => load() }, "More users");
  list.after(more);
  async function load() {
    const page = await get(`/users?limit=50&offset=${offset}`);
    for (const user of page.items) {
      rows.push([
        h("a", { href: `#/users/${encodeURIComponent(user.user_id)}` }, user.user_id),
        user.memory_count,
        when(user.created_at),
      ]);
    }
    list.replaceChildren(
      rows.length
        ? table("Users of this tenant", ["User", "Memories", "First seen"], rows)
        : h("p", {}, "No users yet. Send turns to POST /sessions/{id}/turns to start a bank.")
    );
    more.hidden = page.next_offset === null;
    offset = page.next_offset || 0;
  }
  await load();
}

function memoryItem(memory, forget) {
  return h(
    "li",
    { class: "memory" },
    h("p", { class: "text" }, memory.text),
    h(
      "p",
      { class: "meta" },
      memory.speaker ? `${memory.speaker} · ` : "",
      `version ${memory.version} · updated `,
      when(memory.updated_at),
      memory.score === null ? "" : ` · similarity ${memory.score.toFixed(2)}`,
      " · ",
      h("a", { href: `#/memories/${memory.id}` }, "History", h("span", { class: "sr" }, ` of “${memory.text}”`)),
      " · ",
      h(
        "button",
        { type: "button", class: "quiet", onclick: () => forget(memory) },
        "Forget",
        h("span", { class: "sr" }, ` “${memory.text}”`)
      )
    )
  );
}

async function userView(userId) {
  const base = `/users/${encodeURIComponent(userId)}`;
  const bank = h("ol", { class: "memories" });
  const count = h("p", { class: "meta", "aria-live": "polite" });
  const search = h(
    "form",
    {
      role: "search",
      class: "inline",
      onsubmit: async (event) => {
        event.preventDefault();
        await loadBank(event.target.elements.q.value.trim()).catch(fail);
      },
    },
    h("label", { for: "q" }, "Search memories"),
    h("input", { id: "q", name: "q", type: "search", placeholder: "What does the user like?" }),
    h("button", { type: "submit" }, "Search")
  );
  let shown = ""; // the search the bank shows
  async function forget(memory) {
    if (!confirm(`Forget “${memory.text}”? Its history keeps what it said.`)) return;
    try {
      await api("DELETE", `/memories/${memory.id}`);
      await loadBank(shown);
      say(`Forgot “${memory.text}”.`);
    } catch (error) {
      fail(error);
    }
  }
  async function loadBank(query) {
    shown = query;
    const page = await get(
      `${base}/memories?limit=200` + (query ? `&query=${encodeURIComponent(query)}` : "")
    );
    bank.replaceChildren(...page.items.map((memory) => memoryItem(memory, forget)));
    count.textContent = query
      ? `${page.items.length} memories, most similar to “${query}” first`
      : `${page.items.length}${page.next_offset === null ? "" : "+"} memories, newest first`;
  }
  const jobs = h("div", {});
  show(
    `User ${userId}`,
    section("Ask", askForm(userId)),
    section("Memory bank", search, count, bank),
    section("Ingestion jobs", jobs)
  );
  await loadBank("");
  const page = await get(`${base}/ingestions?limit=20`);
  jobs.replaceChildren(
    page.items.length
      ? table(
          "Ingestion jobs, newest first",
          ["Job", "Status", "Turns", "Created"],
          page.items.map((job) => [
            h("a", { href: `#/ingestions/${job.id}` }, job.id.slice(0, 8)),
            badge(job.status),
            `${job.processed_turns} / ${job.turn_count}`,
            when(job.created_at),
          ])
        )
      : h("p", {}, "No ingestion jobs for this user.")
  );
}

// -- asking and feedback ---------------------------------------------------------------------

function askForm(userId) {
  const out = h("div", { class: "answer", "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "inline",
      onsubmit: async (event) => {
        event.preventDefault();
        const question = event.target.elements.question.value.trim();
        if (!question) return fail("Type a question first.");
        say("Asking…");
        try {
          const reply = await post("/ask", { user_id: userId, question });
          say("");
          out.replaceChildren(...answerView(reply));
        } catch (error) {
          fail(error);
        }
      },
    },
    h("label", { for: "question" }, "Question"),
    h("input", { id: "question", name: "question", type: "text", required: true }),
    h("button", { type: "submit" }, "Ask")
  );
  return h("div", {}, form, out);
}

function answerView(reply) {
  const sent = h("p", { class: "meta" });
  async function send(body, what) {
    try {
      await post("/feedback", { episode_id: reply.episode_id, ...body });
      sent.textContent = `Feedback saved: ${what}.`; // announced: .answer is a live region
    } catch (error) {
      fail(error);
    }
  }
  return [
    h("p", { class: "said" }, h("strong", {}, "Answer: "), reply.answer),
    h(
      "p",
      { class: "meta" },
      `From ${reply.memories.length} of ${reply.retrieved} retrieved memories · ${reply.model}`,
      reply.adapter ? ` + ${reply.adapter}` : "",
      " · ",
      h("a", { href: `#/episodes/${reply.episode_id}` }, "decision log")
    ),
    h("ul", { class: "used" }, reply.memories.map((m) => h("li", {}, m.text))),
    h(
      "div",
      { class: "feedback", role: "group", "aria-label": "Was this answer right?" },
      h("button", { type: "button", onclick: () => send({ rating: 1 }, "right") }, "Right"),
      h("button", { type: "button", onclick: () => send({ rating: -1 }, "wrong") }, "Wrong"),
      h(
        "form",
        {
          class: "inline",
          onsubmit: (event) => {
            event.preventDefault();
            const gold = event.target.elements.gold.value.trim();
            if (!gold) return fail("Type the right answer first.");
            send({ gold_answer: gold }, `the answer is “${gold}”`);
          },
        },
        h("label", { for: "gold" }, "The right answer"),
        h("input", { id: "gold", name: "gold", type: "text" }),
        h("button", { type: "submit" }, "Send")
      )
    ),
    sent,
  ];
}

// -- a memory's history and the decisions behind it ------------------------------------------

function episodeDetails(episode) {
  const facts = [
    ["Agent", episode.agent],
    ["Model", episode.model + (episode.adapter ? ` + ${episode.adapter}` : "")],
    ["Prompt", episode.prompt_version],
    ["Tokens", `${episode.prompt_tokens ?? "?"} in, ${episode.completion_tokens ?? "?"} out`],
    ["Latency", episode.latency_ms === null ? "—" : `${Math.round(episode.latency_ms)} ms`],
    ["Reward", episode.reward ?? "—"],
    ["When", when(episode.created_at)],
  ];
  return h(
    "div",
    { class: "episode" },
    h("dl", {}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    episode.error ? h("p", { class: "error" }, `Error: ${episode.error}`) : null,
    h("h3", {}, "What it was shown"),
    h("pre", {}, JSON.stringify(episode.input, null, 2)),
    h("h3", {}, "Raw decision"),
    h("pre", {}, episode.raw_output ?? "(none)"),
    h("h3", {}, "As applied"),
    h("pre", {}, JSON.stringify(episode.parsed, null, 2)),
    episode.feedback.length
      ? [
          h("h3", {}, "Feedback"),
          h(
            "ul",
            {},
            episode.feedback.map((f) =>
              h("li", {}, f.rating === null ? "" : `rating ${f.rating} `, f.gold_answer ? `gold “${f.gold_answer}”` : "")
            )
          ),
        ]
      : null
  );
}

function change(before, after) {
  const was = before && before.text;
  const now = after && after.text;
  if (was && now && was !== now) return [h("del", {}, was), " → ", h("ins", {}, now)];
  if (now && !was) return h("ins", {}, now);
  if (was && !now) return h("del", {}, was);
  return h("span", {}, now || was || "");
}

async function memoryView(memoryId) {
  const [memory, events] = await Promise.all([
    get(`/memories/${memoryId}`),
    get(`/memories/${memoryId}/history`),
  ]);
  const timeline = h(
    "ol",
    { class: "timeline" },
    events.map((event) => {
      const details = event.episode_id
        ? h(
            "details",
            {
              ontoggle: async (e) => {
                const box = e.target;
                if (!box.open || box.dataset.loaded) return;
                box.dataset.loaded = "1";
                try {
                  box.append(episodeDetails(await get(`/episodes/${event.episode_id}`)));
                } catch (error) {
                  fail(error);
                }
              },
            },
            h("summary", {}, "The decision behind it")
          )
        : null;
      return h(
        "li",
        {},
        h("p", {}, badge(event.op), " ", when(event.created_at), ` · by ${event.actor}`),
        h("p", { class: "change" }, change(event.before, event.after)),
        details
      );
    })
  );
  show(
    "Memory history",
    h(
      "p",
      { class: "card" },
      memory.text,
      h("br"),
      h(
        "span",
        { class: "meta" },
        `${memory.user_id} · version ${memory.version}`,
        memory.deleted_at ? " · deleted" : "",
        " · ",
        h("a", { href: `#/users/${encodeURIComponent(memory.user_id)}` }, "back to the bank")
      )
    ),
    section("Timeline", timeline)
  );
}

async function episodeView(episodeId) {
  show("Decision", episodeDetails(await get(`/episodes/${episodeId}`)));
}

// -- ingestion jobs --------------------------------------------------------------------------

async function ingestionView(jobId, again) {
  const [job, turns] = await Promise.all([
    get(`/ingestions/${jobId}`),
    again ? null : get(`/ingestions/${jobId}/turns`),
  ]);
  if (again && location.hash !== `#/ingestions/${jobId}`) return; // the reader went elsewhere
  const progress = h(
    "div",
    { id: "job" },
    h("p", {}, badge(job.status), ` attempt ${job.attempts} · created `, when(job.created_at)),
    h("label", { for: "turns-done" }, `${job.processed_turns} of ${job.turn_count} turns processed`),
    h("progress", { id: "turns-done", max: job.turn_count, value: job.processed_turns }),
    job.error ? h("p", { class: "error" }, job.error) : null,
    job.operations.length
      ? table(
          "Memory operations applied",
          ["Op", "Memory"],
          job.operations.map((op) => [
            badge(op.op),
            op.memory_id ? h("a", { href: `#/memories/${op.memory_id}` }, op.text || op.memory_id) : op.text || "",
          ])
        )
      : null
  );
  if (again) {
    document.getElementById("job").replaceWith(progress);
  } else {
    show(
      "Ingestion job",
      progress,
      section(
        "Turns",
        h(
          "ol",
          { class: "turns" },
          turns.map((t) => h("li", {}, h("strong", {}, `${t.speaker}: `), t.text, " ", h("span", { class: "meta" }, when(t.occurred_at))))
        )
      )
    );
  }
  if (!TERMINAL.has(job.status)) poll = setTimeout(() => ingestionView(jobId, true).catch(fail), 2000);
}

// -- training --------------------------------------------------------------------------------

function stepOf(job) {
  const m = job.metrics || {};
  return m.step === undefined ? "—" : `${m.step} / ${m.total}`;
}

async function trainingView() {
  const jobs = await get("/admin/training-jobs?limit=50");
  show(
    "Training jobs",
    jobs.length
      ? table(
          "Training jobs, newest first",
          ["Job", "Agent", "Source", "Status", "Step", "Created"],
          jobs.map((job) => [
            h("a", { href: `#/training/${job.id}` }, job.id.slice(0, 8)),
            job.agent,
            job.source,
            badge(job.status),
            stepOf(job),
            when(job.created_at),
          ])
        )
      : h("p", {}, "No training jobs yet. Start one with POST /admin/training-jobs.")
  );
}

// A line chart of one metric over the steps, with the numbers as a table for screen readers.
function chart(title, points) {
  const width = 320;
  const height = 160;
  const pad = 34;
  if (!points.length) return h("figure", { class: "chart" }, h("figcaption", {}, `${title}: no steps yet`));
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const x = (v) => pad + ((v - x0) / (x1 - x0)) * (width - pad - 8);
  const y = (v) => height - pad + 8 - ((v - y0) / (y1 - y0)) * (height - pad);
  const line = points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
  const svg = s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title} by step` },
    s("line", { x1: pad, y1: height - pad + 8, x2: width - 8, y2: height - pad + 8, class: "axis" }),
    s("line", { x1: pad, y1: 8, x2: pad, y2: height - pad + 8, class: "axis" }),
    s("text", { x: 2, y: 14, class: "tick" }, fmt(y1)),
    s("text", { x: 2, y: height - pad + 8, class: "tick" }, fmt(y0)),
    s("text", { x: pad, y: height - 8, class: "tick" }, `step ${x0}`),
    s("text", { x: width - 8, y: height - 8, class: "tick", "text-anchor": "end" }, `step ${x1}`),
    s("path", { d: line, class: "series" }),
    ...points.map((p) => s("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, class: "series" }))
  );
  return h(
    "figure",
    { class: "chart" },
    svg,
    h("figcaption", {}, title),
    h(
      "details",
      {},
      h("summary", {}, `${title} as a table`),
      table(title, ["Step", title], points.map((p) => [p[0], fmt(p[1])]))
    )
  );
}

function fmt(value) {
  return Math.abs(value) >= 100 || value === 0 ? String(Math.round(value * 100) / 100) : value.toPrecision(3);
}

function series(history, key) {
  return history.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
}

async function trainingJobView(jobId, again) {
  const job = await get(`/admin/training-jobs/${jobId}`);
  if (again && location.hash !== `#/training/${jobId}`) return; // the reader went elsewhere
  const m = job.metrics || {};
  const history = m.history || [];
  const running = !TERMINAL.has(job.status);
  const focusInside = main().contains(document.activeElement) && document.activeElement.tagName !== "H1";
  const content = [
    h(
      "p",
      {},
      badge(job.status),
      ` ${job.agent} · ${job.algorithm} on ${job.source}`,
      job.dataset ? ` (${job.dataset})` : "",
      ` · activate ${job.activate} · attempt ${job.attempts}`
    ),
    m.total ? [h("label", { for: "steps" }, `step ${m.step} of ${m.total}`), h("progress", { id: "steps", max: m.total, value: m.step })] : null,
    job.error ? h("p", { class: "error" }, job.error) : null,
    job.adapter_id ? h("p", {}, "Produced an adapter: ", h("a", { href: "#/adapters" }, "see adapters")) : null,
    running && !job.cancel_requested
      ? h(
          "button",
          {
            type: "button",
            onclick: async () => {
              try {
                await post(`/admin/training-jobs/${jobId}/cancel`);
                say("Cancellation requested.");
                refresh();
              } catch (error) {
                fail(error);
              }
            },
          },
          "Cancel job"
        )
      : null,
    section(
      "Curves",
      h("div", { class: "charts" }, chart("Mean reward", series(history, "reward_mean")), chart("KL to the base model", series(history, "kl")))
    ),
    section("Log", h("pre", { class: "log", tabindex: "0", "aria-label": "Log tail" }, job.log_tail || "(empty)")),
  ];
  if (again) {
    // A refresh: keep the heading and the reader's place; replace the rest.
    document.getElementById("training-job").replaceChildren(...content.flat());
    if (focusInside) main().querySelector("h1").focus();
  } else {
    show(`Training job ${jobId.slice(0, 8)}`, h("div", { id: "training-job" }, ...content.flat()));
  }
  function refresh() {
    trainingJobView(jobId, true).catch(fail);
  }
  if (running) poll = setTimeout(refresh, 3000);
}

// -- adapters --------------------------------------------------------------------------------

function metricsText(metrics) {
  if (!metrics) return "—";
  return h(
    "dl",
    { class: "compact" },
    Object.entries(metrics)
      .filter(([, v]) => typeof v !== "object")
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "number" ? fmt(v) : v)])
  );
}

async function adaptersView() {
  const adapters = await get("/admin/adapters");
  const byAgent = {};
  for (const a of adapters) (byAgent[a.agent] ||= []).push(a);
  const sections = Object.entries(byAgent).map(([agent, list]) => {
    const active = list.find((a) => a.status === "active");
    return section(
      `${agent} agent`,
      h("p", {}, active ? ["Serving ", h("strong", {}, active.name), "."] : "Serving the base model."),
      table(
        `${agent} adapters, newest first`,
        ["Adapter", "Status", "Validation", "Created", ""],
        list.map((a) => {
          const canServe = a.status === "candidate" || a.status === "retired";
          return [
            a.name,
            badge(a.status),
            metricsText(a.validation_metrics),
            when(a.created_at),
            canServe
              ? h(
                  "button",
                  {
                    type: "button",
                    onclick: async (event) => {
                      event.target.disabled = true;
                      say(`Activating ${a.name}…`);
                      try {
                        await post(`/admin/adapters/${a.id}/activate`);
                        await adaptersView();
                        say(`${a.name} is now the active ${agent} adapter.`);
                      } catch (error) {
                        event.target.disabled = false;
                        fail(error);
                      }
                    },
                  },
                  // A retired adapter served before: activating it again is the roll back.
                  a.status === "retired" ? "Roll back to this" : "Activate",
                  h("span", { class: "sr" }, ` ${a.name}`)
                )
              : "",
          ];
        })
      )
    );
  });
  show("Adapters", sections.length ? sections : h("p", {}, "No adapters yet: training jobs register them."));
}

// -- routing ---------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/users$/, "memory", usersView],
  [/^#\/users\/(.+)$/, "memory", (id) => userView(decodeURIComponent(id))],
  [/^#\/memories\/([0-9a-f-]{36})$/, "memory", memoryView],
  [/^#\/episodes\/([0-9a-f-]{36})$/, "memory", episodeView],
  [/^#\/ingestions\/([0-9a-f-]{36})$/, "memory", ingestionView],
  [/^#\/training$/, "admin", trainingView],
  [/^#\/training\/([0-9a-f-]{36})$/, "admin", trainingJobView],
  [/^#\/adapters$/, "admin", adaptersView],
];

async function render() {
  clearTimeout(poll);
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  const nav = document.getElementById("nav");
  nav.hidden = !signedIn;
  for (const item of nav.querySelectorAll("[data-scope]")) {
    item.hidden = !scopes().includes(item.dataset.scope);
  }
  for (const link of nav.querySelectorAll("a")) {
    if (location.hash.startsWith(link.getAttribute("href"))) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!signedIn) return loginView();
  for (const [pattern, scope, view] of ROUTES) {
    const match = location.hash.match(pattern);
    if (!match) continue;
    if (!scopes().includes(scope)) {
      return show("Not allowed", h("p", {}, `This view needs a key with the ${scope} scope.`));
    }
    main().setAttribute("aria-busy", "true");
    try {
      await view(...match.slice(1));
    } catch (error) {
      fail(error);
    } finally {
      main().removeAttribute("aria-busy");
    }
    return;
  }
  go(scopes().includes("memory") ? "#/users" : "#/training");
}

window.addEventListener("hashchange", () => {
  if (sessionStorage.getItem(KEY)) {
    // A new view starts without the last one's messages; the one that signed out stays.
    document.getElementById("alert").textContent = "";
    document.getElementById("status").textContent = "";
  }
  render();
});
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", signOut);
  // The skip link must not change the hash: that is the route.
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    main().focus();
  });
  render();
});
