// The admin dashboard: progress per annotator, agreement, export, import, projects and users.
"use strict";
const $ = (id) => document.getElementById(id);
const say = (text) => { $("status").textContent = text; };
const project = () => encodeURIComponent($("project").value);

function table(rows, columns) {
  const node = el("table", null, "data");
  const head = el("tr");
  for (const [title] of columns) head.append(el("th", title));
  node.append(head);
  for (const row of rows) {
    const line = el("tr");
    for (const [, pick] of columns) line.append(el("td", pick(row)));
    node.append(line);
  }
  return node;
}

async function refresh() {
  if (!$("project").value) return;
  const progress = await api("GET", "/api/admin/projects/" + project() + "/progress");
  $("progress-table").replaceChildren(
    el("p", progress.judgments + " of " + progress.judgments_needed + " judgments (" + progress.items + " items × " +
       progress.annotators_per_item + ")"),
    table(progress.annotators, [["annotator", (r) => r.name], ["judgments", (r) => r.judgments],
                                ["skips", (r) => r.skips], ["mean seconds", (r) => r.mean_seconds]]));
  const agreement = await api("GET", "/api/admin/projects/" + project() + "/agreement");
  const shown = (v) => (v === null ? "–" : v);
  $("agreement").replaceChildren(
    el("p", "Fleiss' κ " + shown(agreement.fleiss_kappa) + " · Krippendorff's α " + shown(agreement.krippendorff_alpha) +
       " · " + agreement.items_with_2_or_more_labels + " items with 2+ labels"),
    table(agreement.pairs, [["annotators", (r) => r.annotators.join(" & ")], ["shared items", (r) => r.items],
                            ["Cohen's κ", (r) => shown(r.cohen_kappa)]]),
    table(Object.entries(agreement.with_majority), [["annotator", (r) => r[0]], ["items", (r) => r[1].items],
                                                    ["agrees with the others' majority", (r) => shown(r[1].agreement)]]));
}

async function loadProjects() {
  const projects = await api("GET", "/api/projects");
  const select = $("project");
  const keep = select.value;
  select.replaceChildren(...projects.map((p) => el("option", p.name)));
  if (keep) select.value = keep;
  await refresh();
}

async function start(me) {
  if (me.role !== "admin") { say("This page is for admins; " + me.name + " is an annotator."); return; }
  $("who").textContent = "· " + me.name;
  $("dashboard").hidden = false;
  await loadProjects();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("project").addEventListener("change", refresh);
  $("export").addEventListener("click", async () => {
    const text = await api("GET", "/api/admin/projects/" + project() + "/export?votes=" + $("votes").value +
                           "&ties=" + $("ties").value);
    const link = el("a");
    link.href = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
    link.download = $("project").value + "-preferences.jsonl";
    link.click();
  });
  $("import").addEventListener("click", async () => {
    const file = $("import-file").files[0];
    if (!file) { say("Choose a JSONL file first."); return; }
    try {
      const result = await api("POST", "/api/admin/projects/" + project() + "/items", undefined, await file.text());
      say("Imported " + result.items + " items.");
      await refresh();
    } catch (error) { say("Import failed: " + error.message); }
  });
  $("new-project").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/api/admin/projects", { name: $("project-name").value, guidelines: $("guidelines").value,
                                                 annotators_per_item: Number($("per-item").value) });
      say("Project created.");
      await loadProjects();
    } catch (error) { say("Not created: " + error.message); }
  });
  $("new-user").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const user = await api("POST", "/api/admin/users", { name: $("user-name").value, role: $("user-role").value,
                                                           password: $("user-password").value || null });
      $("new-token").textContent = "Token for " + user.name + " (shown once): " + user.token;
    } catch (error) { say("Not created: " + error.message); }
  });
  const me = await whoAmI();
  if (me) start(me); else showLogin(start);
});
