// Ostinato's web UI: refresh the parts of a page marked data-refresh, tail logs, and send the
// requests of buttons (data-action) and of the run form (data-run-now) to the API.
"use strict";

const FRAGMENT = { "X-Ostinato-Fragment": "1" };

function flash(message, ok) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = message;
  box.className = ok ? "flash ok" : "flash error";
}

async function detail(response) {
  try {
    const body = await response.json();
    return body.detail || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

// Swap each [data-refresh] element for its newer copy (same id) from the page's content; a log
// tail (data-tail) keeps its lines and takes only the newer data-live, so it stops with the run.
async function refresh() {
  const parts = document.querySelectorAll("[data-refresh][id]");
  if (!parts.length || document.visibilityState !== "visible") return;
  const response = await fetch(location.href, { headers: FRAGMENT });
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const part of parts) {
    const fresh = page.getElementById(part.id);
    if (fresh) part.replaceWith(fresh);
  }
  for (const box of document.querySelectorAll("[data-tail][id]")) {
    const fresh = page.getElementById(box.id);
    if (fresh) box.dataset.live = fresh.dataset.live;
  }
}

async function act(button) {
  button.disabled = true;
  try {
    const response = await fetch(button.dataset.action, { method: button.dataset.method || "POST" });
    if (!response.ok) {
      flash(await detail(response), false);
      return;
    }
    flash(button.dataset.done || "done", true);
    await refresh();
  } finally {
    button.disabled = false;
  }
}

function parameterValue(input) {
  const text = input.value;
  switch (input.dataset.type) {
    case "boolean": return input.checked;
    case "integer": return parseInt(text, 10);
    case "number": return parseFloat(text);
    case "json": return JSON.parse(text);
    default: return text;
  }
}

async function runNow(form) {
  const parameters = {};
  try {
    for (const input of form.querySelectorAll("[data-parameter]")) {
      if (input.value === "" && input.dataset.type !== "boolean" && !input.required) continue;
      parameters[input.dataset.parameter] = parameterValue(input);
    }
  } catch (error) {
    flash(`invalid parameter: ${error.message}`, false);
    return;
  }
  const response = await fetch(form.action, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ parameters }),
  });
  if (!response.ok) {
    flash(await detail(response), false);
    return;
  }
  const run = await response.json();
  location.href = `/runs/${run.id}`;
}

const TAIL_PAGE = 1000;

function logRow(line) {
  const row = document.createElement("div");
  row.className = `log level-${line.level}`;
  row.textContent = `${new Date(line.timestamp).toISOString().slice(11, 23)}  ${line.message}`;
  return row;
}

// Append the run's new log lines after the last one shown (data-after): at once while pages come
// back full (lines beyond those the page was rendered with), then every second and a half while
// the run may still log (data-live).
function tail(box) {
  let after = Number(box.dataset.after || 0);
  let full = true; // the first read also picks up what was logged since the page was rendered
  const follow = async () => {
    try {
      if (!full && box.dataset.live !== "true") return;
      full = false;
      const response = await fetch(`${box.dataset.tail}?after=${after}&limit=${TAIL_PAGE}`);
      if (!response.ok) return;
      const lines = await response.json();
      for (const line of lines) {
        box.appendChild(logRow(line));
        after = line.id;
      }
      if (lines.length) box.scrollTop = box.scrollHeight;
      full = lines.length === TAIL_PAGE;
    } catch (_) {
      // the server is away: try again on the next beat
    } finally {
      setTimeout(follow, full ? 0 : 1500);
    }
  };
  follow();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-action]");
  if (button) {
    event.preventDefault();
    act(button);
  }
});

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-run-now]");
  if (form) {
    event.preventDefault();
    runNow(form);
  }
});

document.addEventListener("DOMContentLoaded", () => {
  const main = document.getElementById("content");
  const every = Number(main && main.dataset.refreshEvery) || 5;
  setInterval(refresh, every * 1000);
  document.querySelectorAll("[data-tail]").forEach(tail);
});
