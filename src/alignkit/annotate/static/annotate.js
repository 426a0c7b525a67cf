// The annotator's page: one comparison at a time, keyboard first.
"use strict";
// lastJudgment: the id of the user's latest judgment, from the server; undo names it, so a retried undo
// can never take back an earlier judgment too
const state = { project: null, current: null, lastJudgment: null, shownAt: 0, strength: null, busy: false };
const $ = (id) => document.getElementById(id);

function setStatus(text) { $("status").textContent = text; }

function setStrength(value) {
  state.strength = state.strength === value ? null : value;
  for (const button of document.querySelectorAll("[data-strength]")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.strength) === state.strength));
  }
}

async function start(me) {
  const projects = await api("GET", "/api/projects");
  const wanted = new URLSearchParams(location.search).get("project");
  const project = projects.find((p) => p.name === wanted) || projects[0];
  if (!project) { setStatus("No project yet: ask an admin to create one."); return; }
  state.project = project.name;
  $("project-name").textContent = "· " + project.name + " · " + me.name;
  $("guidelines-text").textContent = project.guidelines || "(no guidelines)";
  await loadNext();
}

async function loadNext() {
  const next = await api("GET", "/api/projects/" + encodeURIComponent(state.project) + "/next");
  $("progress").textContent = next.judged + " judged · " + next.remaining + " left";
  state.lastJudgment = next.last_judgment_id;
  $("guidelines-text").textContent = next.guidelines || "(no guidelines)";
  if (next.finished) {
    state.current = null;
    $("task").hidden = true;
    $("done").hidden = false;
    return;
  }
  state.current = next;
  renderPrompt($("prompt"), next.prompt);
  $("left-text").textContent = next.left;
  $("right-text").textContent = next.right;
  $("reason").value = "";
  state.strength = null;
  setStrength(null);
  $("done").hidden = true;
  $("task").hidden = false;
  state.shownAt = performance.now();
  window.scrollTo(0, 0);
}

async function choose(choice) {
  if (!state.current || state.busy) return;
  state.busy = true;
  try {
    const body = { choice, reason: $("reason").value, time_spent_ms: Math.round(performance.now() - state.shownAt) };
    if (state.strength && (choice === "left" || choice === "right")) body.strength = state.strength;
    await api("POST", "/api/assignments/" + state.current.assignment_id + "/judgment", body);
    setStatus("Saved: " + choice.replace("_", " "));
    await loadNext();
  } catch (error) {
    setStatus("Not saved (" + error.message + "); try again.");
  } finally {
    state.busy = false;
  }
}

async function undo() {
  if (state.busy || !state.project) return;
  state.busy = true;
  try {
    if (state.lastJudgment === null || state.lastJudgment === undefined) { setStatus("Nothing to undo."); return; }
    try {
      await api("POST", "/api/projects/" + encodeURIComponent(state.project) + "/undo",
                { judgment_id: state.lastJudgment });
      setStatus("Undone: judge it again.");
    } catch (error) {
      if (error.status !== 404 && error.status !== 409) throw error;
      setStatus("Not undone: " + error.message);  // already undone, or the skipped item went to someone else
    }
    await loadNext();
  } finally {
    state.busy = false;
  }
}

function toggle(id) {
  const box = $(id);
  const opening = box.hidden;
  for (const other of ["help", "guidelines"]) $(other).hidden = true;
  box.hidden = !opening;
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT") {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "Escape") { $("help").hidden = true; $("guidelines").hidden = true; return; }
  if (key === "?") { toggle("help"); return; }
  if (key === "g") { toggle("guidelines"); return; }
  if (key === "u") { undo(); return; }
  if (!$("login").hidden || $("task").hidden) return;
  const choices = { "1": "left", "2": "right", t: "tie", b: "both_bad", s: "skip" };
  const strengths = { z: 1, x: 2, c: 3 };
  if (choices[key]) { event.preventDefault(); choose(choices[key]); }
  else if (strengths[key]) { setStrength(strengths[key]); }
  else if (key === "r") { event.preventDefault(); $("reason").focus(); }
});

document.addEventListener("DOMContentLoaded", async () => {
  for (const button of document.querySelectorAll("[data-choice]")) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  for (const button of document.querySelectorAll("[data-strength]")) {
    button.addEventListener("click", () => setStrength(Number(button.dataset.strength)));
  }
  $("undo").addEventListener("click", undo);
  $("undo-done").addEventListener("click", undo);
  $("show-help").addEventListener("click", () => toggle("help"));
  $("show-guidelines").addEventListener("click", () => toggle("guidelines"));
  const me = await whoAmI();
  if (me) start(me); else showLogin(start);
});
