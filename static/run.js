// Follows a run live: its state, steps and log, through the runs API (session auth).
(function () {
  const card = document.getElementById("run");
  if (!card) return;
  const log = document.getElementById("log");
  let after = 0;
  const finished = ["succeeded", "failed", "cancelled", "lost"];

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

  function showSteps(steps) {
    if (!steps.length) return;
    const body = document.querySelector("#steps tbody");
    body.replaceChildren(...steps.map(function (s) {
      const row = document.createElement("tr");
      row.dataset.step = s.name;
      const badge = document.createElement("span");
      badge.className = "badge " + s.state;
      badge.textContent = s.state;
      const state = document.createElement("td");
      state.appendChild(badge);
      row.append(cell(s.name), state, cell(s.attempts), cell(s.exit_code === null ? "" : s.exit_code), cell(s.reason));
      return row;
    }));
  }

  async function tick() {
    const run = await (await fetch(card.dataset.api, {credentials: "same-origin"})).json();
    const state = document.getElementById("run-state");
    state.textContent = run.state;
    state.className = "badge " + run.state;
    document.getElementById("run-reason").textContent = run.reason;
    document.getElementById("run-node").textContent = run.node || "—";
    document.getElementById("run-devices").textContent = run.device_ids.join(", ") || "—";
    showSteps(run.steps);
    const logs = await (await fetch(card.dataset.logs + "?after=" + after, {credentials: "same-origin"})).json();
    for (const chunk of logs.chunks) log.textContent += chunk.text;
    after = logs.next;
    if (finished.includes(run.state) && !logs.chunks.length) {
      const cancel = document.getElementById("run-cancel");
      if (cancel) cancel.remove();
      card.dataset.done = "true";
      return;
    }
    setTimeout(tick, 1000);
  }
  tick();
})();
