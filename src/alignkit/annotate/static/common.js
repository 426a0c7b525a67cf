// Shared by both pages: JSON calls with the CSRF header, and safe rendering (textContent only: model
// output is text, never markup).
"use strict";
const app = { csrf: null };

async function api(method, path, body, raw) {
  const headers = {};
  if (app.csrf) headers["X-CSRF-Token"] = app.csrf;
  let payload;
  if (raw !== undefined) { payload = raw; headers["Content-Type"] = "application/x-ndjson"; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") && !type.includes("ndjson") ? await response.json() : await response.text();
  if (!response.ok) {
    const error = new Error(typeof data === "object" ? JSON.stringify(data.detail) : data);
    error.status = response.status;
    throw error;
  }
  return data;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function renderPrompt(container, prompt) {
  container.replaceChildren();
  if (Array.isArray(prompt)) {
    for (const turn of prompt) {
      const box = el("div", null, "turn turn-" + String(turn.role || "user").replace(/[^a-z]/g, ""));
      box.append(el("span", turn.role || "user", "role"), el("div", turn.content || "", "text"));
      container.append(box);
    }
  } else {
    container.append(el("div", prompt, "text"));
  }
}

function showLogin(onDone) {
  // the same form on both pages: name + password, or an access token
  const section = document.getElementById("login");
  const form = el("form");
  form.id = "login-form";
  const field = (label, id, type, autocomplete) => {
    const wrap = el("label", label + " ");
    const input = el("input");
    input.id = id;
    input.type = type;
    input.autocomplete = autocomplete;
    wrap.append(input);
    return wrap;
  };
  const submit = el("button", "Log in");
  submit.type = "submit";
  const error = el("p", null, "error");
  error.id = "login-error";
  error.setAttribute("role", "alert");
  form.append(field("Name", "login-name", "text", "username"), field("Password", "login-password", "password",
              "current-password"), el("p", "or", "or"), field("Access token", "login-token", "text", "off"),
              submit, error);
  form.addEventListener("submit", (event) => login(event, onDone));
  section.replaceChildren(el("h1", "Log in"), form);
  section.hidden = false;
}

async function login(event, onDone) {
  event.preventDefault();
  const name = document.getElementById("login-name").value;
  const password = document.getElementById("login-password").value;
  const token = document.getElementById("login-token").value;
  try {
    const me = await api("POST", "/api/login", token ? { token } : { name, password });
    app.csrf = me.csrf;
    document.getElementById("login").hidden = true;
    onDone(me);
  } catch (error) {
    document.getElementById("login-error").textContent = "Could not log in: " + error.message;
  }
}

async function whoAmI() {
  try { const me = await api("GET", "/api/me"); app.csrf = me.csrf; return me; }
  catch (error) { if (error.status === 401) return null; throw error; }
}
