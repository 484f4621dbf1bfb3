// iot-x509-kit console: a client of /api/v1, nothing more. No framework, no build step.
// Rules: every text from the server is set with textContent (never innerHTML); the API token
// lives in sessionStorage only and travels in the Authorization header, never in a URL.
"use strict";

(function () {
  const TOKEN_KEY = "iotx509.token";
  const API = "/api/v1";
  const REFRESH_MS = 5000;   // Overview, Devices and a device's details follow the server
  const root = document.getElementById("main");
  let view = root;   // the current page's container: a page that is left keeps writing to its own
  const nav = document.getElementById("nav");
  const signOutButton = document.getElementById("sign-out");
  let leavePage = [];   // cleanups of the current page (streams, timers)

  // --- DOM helpers ------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function table(headers, rows, attrs) {
    return el("table", attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows));
  }

  function td(value, className) {
    return el("td", { className: className || "", text: value === null || value === undefined ? "—" : value });
  }

  function stateBadge(state) { return el("span", { className: "state " + state, text: state }); }

  function shortTime(iso) { return iso ? iso.replace("T", " ").replace("Z", " UTC") : "—"; }

  function devicePath(pk, dn) { return "#/device/" + encodeURIComponent(pk) + "/" + encodeURIComponent(dn); }

  // --- API --------------------------------------------------------------------------------------

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function api(method, path, body, extra) {
    const headers = { Authorization: "Bearer " + token() };
    const init = { method, headers, cache: "no-store", signal: extra && extra.signal };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      return { ok: false, status: 0, error: { message: "the server cannot be reached: " + err.message } };
    }
    if (response.status === 401 && path !== "/products") { signOut("Your API token is no longer valid; sign in again."); }
    if (extra && extra.raw) return { ok: response.ok, status: response.status, response };
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) data = await response.json();
    else if (response.status !== 204) data = await response.text();
    if (!response.ok) {
      const error = data && data.error ? data.error : { message: "HTTP " + response.status };
      return { ok: false, status: response.status, error };
    }
    return { ok: true, status: response.status, data };
  }

  function showError(node, result) {
    node.textContent = result.error.message;
  }

  // --- sign in ----------------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (location.hash !== "#/signin") history.replaceState(null, "", "#/signin");
    render(message);
  }

  function pageSignIn(message) {
    const main = view;
    nav.hidden = true; signOutButton.hidden = true;
    const input = el("input", { type: "password", id: "token", autocomplete: "off", spellcheck: "false", required: true });
    const error = el("p", { className: "error", role: "alert", text: message || "" });
    const form = el("form", { className: "card signin", "aria-label": "Sign in" },
      el("h1", { text: "Sign in" }),
      el("p", { className: "hint", text: "Paste the API token of your account (iotx509 server account create prints it; the server's data directory holds the default account's admin-token)." }),
      el("label", { for: "token", text: "API token" }), input,
      el("div", { className: "actions" }, el("button", { type: "submit", className: "primary", text: "Sign in" })),
      error);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      const result = await api("GET", "/products");
      if (!result.ok) {
        sessionStorage.removeItem(TOKEN_KEY);
        showError(error, result);
        return;
      }
      location.hash = "#/overview";
    });
    main.append(form);
    input.focus();
  }

  // --- Products ---------------------------------------------------------------------------------

  async function pageProducts() {
    const main = view;
    main.append(el("h1", { text: "Products" }));
    const nameInput = el("input", { type: "text", id: "product-name" });
    const error = el("p", { className: "error", role: "alert" });
    const form = el("form", { className: "card", "aria-label": "Create Product" },
      el("h2", { text: "Create Product" }),
      el("label", { for: "product-name", text: "Product Name" }), nameInput,
      el("label", { text: "Authentication Mode" }), el("div", { text: "X.509 certificate" }),
      el("label", { text: "Use Private CA Certificate" }), el("div", { text: "Yes" }),
      el("div", { className: "actions" }, el("button", { type: "submit", className: "primary", text: "Create" })),
      error);
    const list = el("div");
    main.append(form, list);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const result = await api("POST", "/products", { name: nameInput.value, authType: "x509", privateCa: true, network: "mqtt" });
      if (!result.ok) { showError(error, result); return; }
      nameInput.value = "";
      await load();
    });
    async function load() {
      const result = await api("GET", "/products");
      clear(list);
      if (!result.ok) { list.append(el("p", { className: "error", text: result.error.message })); return; }
      list.append(table(
        ["ProductKey", "Product Name", "Authentication Mode", "Private CA", "Network", "Created"],
        result.data.map((p) => el("tr", {},
          td(p.productKey, "mono"), td(p.name), td(p.authType === "x509" ? "X.509 certificate" : p.authType),
          td(p.privateCa ? "Yes" : "No"), td(p.network.toUpperCase()), td(shortTime(p.createdAt)))),
        { id: "products-table", "aria-label": "Products" }));
    }
    await load();
  }

  // --- CA certificates --------------------------------------------------------------------------

  let namingRules = null;
  async function rules() {
    if (!namingRules) {
      const result = await api("GET", "/naming-rules");
      namingRules = result.ok ? result.data : { caNamePattern: ".*", caNameRule: "", caFileSuffixes: [".cer", ".crt", ".pem"] };
    }
    return namingRules;
  }

  async function pageCas() {
    const main = view;
    main.append(el("h1", { text: "CA Certificates" }));
    const openButton = el("button", { type: "button", className: "primary", text: "Register CA Certificate" });
    const list = el("div");
    main.append(el("div", { className: "actions" }, openButton), el("h2", { text: "Manage CA Certificates" }), list);
    // the click works from the start: it waits for the dialog (it needs the naming rules)
    const dialogReady = registerDialog(load).then((dialog) => { main.append(dialog); return dialog; });
    openButton.addEventListener("click", async () => (await dialogReady).open_());
    async function load() {
      const result = await api("GET", "/ca-certificates");
      clear(list);
      if (!result.ok) { list.append(el("p", { className: "error", text: result.error.message })); return; }
      list.append(table(
        ["CA Certificate Name", "Subject", "SN", "Valid from", "Valid to", "Status", ""],
        result.data.map((c) => el("tr", {},
          td(c.name), td(c.subject), td(c.caSn, "mono"), td(shortTime(c.notBefore)), td(shortTime(c.notAfter)),
          el("td", {}, stateBadge(c.status)),
          el("td", {}, el("a", { className: "button", href: "#/ca/" + encodeURIComponent(c.caSn), text: "View" })))),
        { id: "cas-table", "aria-label": "CA Certificates" }));
    }
    await load();
  }

  async function registerDialog(onRegistered) {
    const r = await rules();
    const accept = r.caFileSuffixes.join(",");
    const pattern = new RegExp("^(?:" + r.caNamePattern + ")$");
    const code = el("output", { id: "registration-code", "aria-label": "Registration Code" });
    const copied = el("span", { className: "hint", role: "status" });
    const copyButton = el("button", { type: "button", text: "Copy" });
    const nameInput = el("input", { type: "text", id: "ca-name", autocomplete: "off", "aria-describedby": "ca-name-rule" });
    const nameRule = el("div", { id: "ca-name-rule", className: "hint", text: r.caNameRule });
    const caFile = el("input", { type: "file", id: "ca-file", accept });
    const verFile = el("input", { type: "file", id: "verification-file", accept });
    const error = el("p", { className: "error", role: "alert", id: "register-error" });
    const okButton = el("button", { type: "submit", className: "primary", text: "OK" });
    const form = el("form", { method: "dialog" },
      el("h2", { text: "Register CA Certificate" }),
      el("label", { for: "registration-code", text: "Registration Code" }),
      el("div", { className: "code-box" }, code, copyButton, copied),
      el("div", { className: "hint", text: "Make the verification certificate with this code as its Common Name, signed by the CA's key." }),
      el("label", { for: "ca-name", text: "CA Certificate Name" }), nameInput, nameRule,
      el("label", { for: "ca-file", text: "CA Certificate" }), caFile,
      el("label", { for: "verification-file", text: "Validation Certificate" }), verFile,
      el("div", { className: "hint", text: "Files ending in " + r.caFileSuffixes.join(", ") }),
      error,
      el("div", { className: "actions" }, okButton, el("button", { type: "button", value: "cancel", text: "Cancel", onclick: () => dialog.close() })));
    const dialog = el("dialog", { id: "register-dialog", "aria-label": "Register CA Certificate" }, form);

    function checkName() {
      const value = nameInput.value;
      const good = pattern.test(value);
      nameInput.classList.toggle("invalid", value !== "" && !good);
      nameRule.className = value !== "" && !good ? "error" : "hint";
      nameRule.textContent = value !== "" && !good
        ? "CA Certificate Name must be " + r.caNameRule + " (" + value.length + " characters now)"
        : r.caNameRule;
      okButton.disabled = !good;
      return good;
    }
    nameInput.addEventListener("input", checkName);
    copyButton.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(code.textContent); copied.textContent = "Copied"; }
      catch (err) { copied.textContent = "Select the code and copy it"; }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      if (!checkName()) return;
      if (!caFile.files.length || !verFile.files.length) { error.textContent = "Choose both files: the CA Certificate and the Validation Certificate."; return; }
      const body = new FormData();
      body.append("name", nameInput.value);
      body.append("caCertificate", caFile.files[0], caFile.files[0].name);
      body.append("verificationCertificate", verFile.files[0], verFile.files[0].name);
      okButton.disabled = true;
      const result = await api("POST", "/ca-certificates", body);
      okButton.disabled = false;
      if (!result.ok) { showError(error, result); return; }
      dialog.close();
      await onRegistered();
    });
    dialog.open_ = async () => {
      form.reset(); error.textContent = ""; copied.textContent = ""; checkName();
      const result = await api("GET", "/registration-code");
      code.textContent = result.ok ? result.data.registrationCode : "";
      if (!result.ok) showError(error, result);
      dialog.showModal();
      nameInput.focus();
    };
    return dialog;
  }

  async function pageCa(caSn) {
    const main = view;
    const result = await api("GET", "/ca-certificates/" + encodeURIComponent(caSn));
    main.append(el("p", {}, el("a", { href: "#/cas", text: "← CA Certificates" })));
    if (!result.ok) { main.append(el("p", { className: "error", text: result.error.message })); return; }
    const ca = result.data;
    main.append(el("h1", { text: "CA Certificate Details: " + ca.name }));
    const statusBox = el("dd", {});
    const toggle = el("button", { type: "button", id: "ca-toggle" });
    const statusError = el("p", { className: "error", role: "alert" });
    function showStatus(status) {
      clear(statusBox); statusBox.append(stateBadge(status), " ", toggle);
      toggle.textContent = status === "active" ? "Disable" : "Enable";
    }
    showStatus(ca.status);
    toggle.addEventListener("click", async () => {
      statusError.textContent = "";
      const next = toggle.textContent === "Disable" ? "inactive" : "active";
      const r = await api("PATCH", "/ca-certificates/" + encodeURIComponent(ca.caSn), { status: next });
      if (!r.ok) { showError(statusError, r); return; }
      showStatus(r.data.status);
    });
    main.append(el("div", { className: "card" }, el("dl", { className: "details" },
      el("dt", { text: "CA Certificate Name" }), el("dd", { text: ca.name }),
      el("dt", { text: "Subject" }), el("dd", { text: ca.subject }),
      el("dt", { text: "SN" }), el("dd", { className: "mono", text: ca.caSn }),
      el("dt", { text: "Valid from" }), el("dd", { text: shortTime(ca.notBefore) }),
      el("dt", { text: "Valid to" }), el("dd", { text: shortTime(ca.notAfter) }),
      el("dt", { text: "SHA-256 fingerprint" }), el("dd", { className: "mono", text: ca.fingerprintSha256 }),
      el("dt", { text: "Status" }), statusBox), statusError));

    // association: template and upload
    const templateButton = el("button", { type: "button", text: "Download .csv Template" });
    const csvInput = el("input", { type: "file", id: "csv-file", accept: ".csv,text/csv" });
    const uploadButton = el("button", { type: "button", className: "primary", text: "Upload" });
    const outcome = el("div", { id: "upload-result", role: "status" });
    main.append(el("div", { className: "card" },
      el("h2", { text: "Associate device certificates" }),
      el("p", { className: "hint", text: "One row per device: ProductKey,DeviceName,CertSN (at most 10,000 rows, one product). The whole file is checked before anything is saved." }),
      el("div", { className: "actions" }, templateButton),
      el("label", { for: "csv-file", text: "Association CSV" }),
      el("div", { className: "row" }, el("div", {}, csvInput), el("div", {}, uploadButton)),
      outcome));
    const associations = el("div");
    main.append(el("h2", { text: "Associated device certificates" }), associations);

    templateButton.addEventListener("click", async () => {
      const r = await api("GET", "/ca-certificates/" + encodeURIComponent(ca.caSn) + "/association-template", undefined, { raw: true });
      if (!r.ok) { outcome.textContent = "The template cannot be downloaded (HTTP " + r.status + ")"; return; }
      const blob = await r.response.blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: "associations_" + ca.caSn + ".csv", hidden: true });
      document.body.append(link); link.click(); link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
    uploadButton.addEventListener("click", async () => {
      clear(outcome);
      if (!csvInput.files.length) { outcome.append(el("p", { className: "error", text: "Choose the association CSV first." })); return; }
      const body = new FormData();
      body.append("file", csvInput.files[0], csvInput.files[0].name);
      uploadButton.disabled = true;
      const r = await api("POST", "/ca-certificates/" + encodeURIComponent(ca.caSn) + "/associations", body);
      uploadButton.disabled = false;
      if (r.ok) {
        outcome.append(el("p", { className: "success", id: "upload-count", text: r.data.associated + " device certificates associated." }));
        await loadAssociations();
        return;
      }
      outcome.append(el("p", { className: "error", role: "alert", text: r.error.message }));
      if (Array.isArray(r.error.rows) && r.error.rows.length) {
        outcome.append(table(["Row", "Reason"],
          r.error.rows.map((row) => el("tr", {}, td(String(row.row)), td(row.message))),
          { id: "refused-rows", "aria-label": "Refused rows" }));
      }
    });
    async function loadAssociations() {
      const r = await api("GET", "/ca-certificates/" + encodeURIComponent(ca.caSn) + "/associations");
      clear(associations);
      if (!r.ok) { associations.append(el("p", { className: "error", text: r.error.message })); return; }
      associations.append(el("p", { className: "hint", id: "association-count", text: r.data.length + " associated" }));
      associations.append(table(["Certificate SN", "ProductKey", "DeviceName", "Associated"],
        r.data.slice(0, 200).map((a) => el("tr", {}, td(a.certSn, "mono"), td(a.productKey, "mono"),
          el("td", {}, el("a", { href: devicePath(a.productKey, a.deviceName), text: a.deviceName })), td(shortTime(a.createdAt)))),
        { id: "associations-table", "aria-label": "Associated device certificates" }));
      if (r.data.length > 200) associations.append(el("p", { className: "hint", text: "The first 200 are shown; the Devices page filters and pages them all." }));
    }
    await loadAssociations();
  }

  // --- Devices ----------------------------------------------------------------------------------

  async function setDeviceStatus(pk, dn, status) {
    return api("PATCH", "/devices/" + encodeURIComponent(pk) + "/" + encodeURIComponent(dn), { status });
  }

  async function pageDevices() {
    const main = view;
    main.append(el("h1", { text: "Devices" }));
    const filter = el("input", { type: "search", id: "device-filter", placeholder: "ProductKey, DeviceName or certificate SN", maxlength: "64" });
    const stateSelect = el("select", { id: "device-state" },
      el("option", { value: "", text: "All" }), el("option", { value: "online", text: "Online" }),
      el("option", { value: "offline", text: "Offline" }), el("option", { value: "disabled", text: "Disabled" }));
    const prev = el("button", { type: "button", text: "Previous" });
    const next = el("button", { type: "button", text: "Next" });
    const pageInfo = el("span", { id: "page-info", role: "status" });
    const error = el("p", { className: "error", role: "alert" });
    const list = el("div", { id: "devices-list" });
    main.append(el("div", { className: "row card" },
      el("div", {}, el("label", { for: "device-filter", text: "Filter" }), filter),
      el("div", {}, el("label", { for: "device-state", text: "State" }), stateSelect)),
      error, list, el("div", { className: "pager" }, prev, pageInfo, next));
    const pageSize = 50;
    let page = 1; let pages = 1; let sequence = 0; let debounce = null;

    async function load() {
      const mine = ++sequence;
      const params = new URLSearchParams({ page: String(page), pageSize: String(pageSize) });
      if (filter.value.trim()) params.set("q", filter.value.trim());
      if (stateSelect.value) params.set("state", stateSelect.value);
      const r = await api("GET", "/devices?" + params.toString());
      if (mine !== sequence) return;   // a newer filter is on its way
      error.textContent = "";
      if (!r.ok) { showError(error, r); return; }
      pages = Math.max(1, Math.ceil(r.data.total / pageSize));
      pageInfo.textContent = "Page " + page + " of " + pages + " (" + r.data.total + " devices)";
      prev.disabled = page <= 1; next.disabled = page >= pages;
      clear(list);
      list.append(table(
        ["ProductKey", "DeviceName", "Certificate SN", "Issuing CA", "Expiry", "State", "Last connection", ""],
        r.data.items.map((d) => {
          const toggle = el("button", { type: "button", text: d.status === "enabled" ? "Disable" : "Enable" });
          toggle.addEventListener("click", async () => {
            const result = await setDeviceStatus(d.productKey, d.deviceName, d.status === "enabled" ? "disabled" : "enabled");
            if (!result.ok) { showError(error, result); return; }
            await load();
          });
          const expiry = d.expiresAt ? shortTime(d.expiresAt) + (d.expirySource === "ca" ? " (CA)" : "") : "—";
          return el("tr", { "data-device": d.productKey + "/" + d.deviceName },
            td(d.productKey, "mono"),
            el("td", {}, el("a", { href: devicePath(d.productKey, d.deviceName), text: d.deviceName })),
            td(d.certSn, "mono"), td(d.caName ? d.caName + " (" + d.caSn + ")" : null), td(expiry),
            el("td", {}, stateBadge(d.state)), td(shortTime(d.lastConnectedAt)), el("td", {}, toggle));
        }),
        { id: "devices-table", "aria-label": "Devices" }));
    }
    filter.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { page = 1; load(); }, 200);
    });
    stateSelect.addEventListener("change", () => { page = 1; load(); });
    prev.addEventListener("click", () => { if (page > 1) { page -= 1; load(); } });
    next.addEventListener("click", () => { if (page < pages) { page += 1; load(); } });
    const refresh = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
    leavePage.push(() => { clearTimeout(debounce); clearInterval(refresh); });
    await load();
  }

  // --- one device -------------------------------------------------------------------------------

  function messageItem(m) {
    const payload = m.payloadEncoding === "base64" ? "(base64) " + m.payload : m.payload;
    return el("li", {},
      el("div", { className: "meta" }, shortTime(m.receivedAt) + "  ·  QoS " + m.qos + "  ·  ", el("span", { className: "mono", text: m.topic })),
      el("pre", { text: payload }));
  }

  async function streamMessages(pk, dn, list, status) {
    const controller = new AbortController();
    leavePage.push(() => controller.abort());
    const r = await api("GET", "/devices/" + encodeURIComponent(pk) + "/" + encodeURIComponent(dn) + "/messages/stream",
      undefined, { raw: true, signal: controller.signal }).catch(() => null);
    if (!r) return;
    if (!r.ok) {
      let message = "HTTP " + r.status;
      try { message = (await r.response.json()).error.message; } catch (err) { /* keep the status */ }
      status.textContent = "Live messages unavailable: " + message; status.className = "live error";
      return;
    }
    const reader = r.response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          let name = "message"; const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trim());
          }
          if (!data.length) continue;
          const payload = JSON.parse(data.join("\n"));
          if (name === "ready") { status.textContent = "Live"; status.className = "live on"; }
          else if (name === "dropped") { list.append(el("li", { className: "hint", text: payload.dropped + " messages were dropped (the console read too slowly)" })); }
          else if (name === "message") { list.append(messageItem(payload)); list.scrollTop = list.scrollHeight; }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
    }
    status.textContent = "Disconnected from the live stream; reopen the page to reconnect"; status.className = "live";
  }

  async function pageDevice(pk, dn) {
    const main = view;
    const base = "/devices/" + encodeURIComponent(pk) + "/" + encodeURIComponent(dn);
    main.append(el("p", {}, el("a", { href: "#/devices", text: "← Devices" })));
    const heading = el("h1", { text: "Device " + dn });
    main.append(heading);
    const detailError = el("p", { className: "error", role: "alert" });
    const details = el("div", { className: "card" });
    main.append(details, detailError);

    async function loadDetails() {
      const params = new URLSearchParams({ q: dn, productKey: pk, pageSize: "100" });
      const [one, listed] = await Promise.all([api("GET", base), api("GET", "/devices?" + params.toString())]);
      clear(details);
      if (!one.ok) { showError(detailError, one); return; }
      const d = one.data;
      const summary = listed.ok ? listed.data.items.find((x) => x.productKey === pk && x.deviceName === dn) : null;
      const state = d.status === "disabled" ? "Disabled" : d.online ? "Online" : "Offline";
      const toggle = el("button", { type: "button", id: "device-toggle", text: d.status === "enabled" ? "Disable" : "Enable" });
      toggle.addEventListener("click", async () => {
        detailError.textContent = "";
        const r = await setDeviceStatus(pk, dn, d.status === "enabled" ? "disabled" : "enabled");
        if (!r.ok) { showError(detailError, r); return; }
        await loadDetails();
      });
      details.append(el("dl", { className: "details" },
        el("dt", { text: "ProductKey" }), el("dd", { className: "mono", text: d.productKey }),
        el("dt", { text: "DeviceName" }), el("dd", { text: d.deviceName }),
        el("dt", { text: "State" }), el("dd", { id: "device-state-value" }, stateBadge(state), " ", toggle),
        el("dt", { text: "Certificate SN" }), el("dd", { className: "mono", text: d.certSn || "—" }),
        el("dt", { text: "Issuing CA" }), el("dd", { text: summary && summary.caName ? summary.caName + " (" + d.caSn + ")" : (d.caSn || "—") }),
        el("dt", { text: "Expiry" }), el("dd", { text: summary && summary.expiresAt ? shortTime(summary.expiresAt) + (summary.expirySource === "ca" ? " (CA)" : "") : "—" }),
        el("dt", { text: "Last connection" }), el("dd", { text: summary ? shortTime(summary.lastConnectedAt) : "—" })),
        el("div", { className: "actions" }, el("button", { type: "button", text: "Refresh", onclick: () => loadDetails() })));
    }
    await loadDetails();
    const refresh = setInterval(() => { if (!document.hidden) loadDetails(); }, REFRESH_MS);
    leavePage.push(() => clearInterval(refresh));

    const status = el("span", { className: "live", id: "live-status", role: "status", text: "Connecting…" });
    const list = el("ul", { className: "messages", id: "messages", "aria-label": "Messages" });
    const topic = el("input", { type: "text", id: "send-topic", value: "/" + pk + "/" + dn + "/user/get" });
    const payload = el("textarea", { id: "send-payload" });
    const qos = el("select", { id: "send-qos" }, el("option", { value: "0", text: "0" }), el("option", { value: "1", text: "1" }));
    const sendResult = el("p", { id: "send-result", role: "status" });
    const form = el("form", { className: "card", "aria-label": "Send message" },
      el("h2", { text: "Send message" }),
      el("label", { for: "send-topic", text: "Topic" }), topic,
      el("div", { className: "hint", text: "Within the device's topics: /" + pk + "/" + dn + "/… or /sys/" + pk + "/" + dn + "/…" }),
      el("label", { for: "send-payload", text: "Payload" }), payload,
      el("label", { for: "send-qos", text: "QoS" }), qos,
      el("div", { className: "actions" }, el("button", { type: "submit", className: "primary", text: "Send" })),
      sendResult);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      sendResult.textContent = ""; sendResult.className = "";
      const r = await api("POST", base + "/messages", { topic: topic.value, payload: payload.value, qos: Number(qos.value) });
      if (!r.ok) { sendResult.className = "error"; showError(sendResult, r); return; }
      sendResult.className = "success"; sendResult.textContent = "Sent to the device.";
    });
    main.append(el("div", { className: "grid2" },
      el("div", {}, el("h2", {}, "Live messages ", status), list),
      el("div", {}, form)));

    const recent = await api("GET", base + "/messages?limit=50");
    if (recent.ok) recent.data.forEach((m) => list.append(messageItem(m)));
    streamMessages(pk, dn, list, status);
  }

  // --- Overview ---------------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chart(samples, width) {
    const W = Math.max(400, Math.round(width || 900)), H = 240, L = 44, R = 44, T = 12, B = 28;
    const root = svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, role: "img", id: "overview-chart",
      "aria-label": "Connections per second and devices online over the last " + samples.length + " seconds" });
    const maxC = Math.max(1, ...samples.map((s) => s.connections));
    const maxO = Math.max(1, ...samples.map((s) => s.online));
    const n = Math.max(1, samples.length);
    const w = (W - L - R) / n;
    const y = (v, max) => T + (H - T - B) * (1 - v / max);
    root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: W - R, y1: T, x2: W - R, y2: H - B }));
    root.append(svg("text", { x: L - 6, y: T + 10, "text-anchor": "end" }, String(maxC)));
    root.append(svg("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
    root.append(svg("text", { x: W - R + 6, y: T + 10 }, String(maxO)));
    root.append(svg("text", { x: W - R + 6, y: H - B }, "0"));
    samples.forEach((s, i) => {
      if (!s.connections) return;
      const top = y(s.connections, maxC);
      root.append(svg("rect", { class: "bar", x: L + i * w, y: top, width: Math.max(1, w - 0.5), height: H - B - top }));
    });
    const points = samples.map((s, i) => (L + i * w + w / 2).toFixed(1) + "," + y(s.online, maxO).toFixed(1)).join(" ");
    if (samples.length) root.append(svg("polyline", { class: "line", points }));
    if (samples.length) {
      root.append(svg("text", { x: L, y: H - 8 }, shortTime(samples[0].at)));
      root.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, shortTime(samples[samples.length - 1].at)));
    }
    return root;
  }

  async function pageOverview() {
    const main = view;
    main.append(el("h1", { text: "Overview" }));
    const online = el("div", { className: "stat", id: "online-count", text: "…" });
    const perMinute = el("div", { className: "stat", id: "connections-count", text: "…" });
    const holder = el("div");
    const error = el("p", { className: "error", role: "alert" });
    main.append(el("div", { className: "grid2" },
      el("div", { className: "card" }, el("div", { className: "hint", text: "Devices online now" }), online),
      el("div", { className: "card" }, el("div", { className: "hint", text: "Connections in the last 5 minutes" }), perMinute)),
      el("div", { className: "card" }, el("h2", { text: "Last 5 minutes" }), holder,
        el("div", { className: "legend" }, el("span", {}, el("span", { className: "sw bar" }), "connections per second (left axis)"),
          el("span", {}, el("span", { className: "sw line" }), "devices online (right axis)"))),
      error);
    async function load() {
      const r = await api("GET", "/overview?seconds=300");
      if (!r.ok) { showError(error, r); return; }
      error.textContent = "";
      online.textContent = String(r.data.online);
      perMinute.textContent = String(r.data.samples.reduce((sum, s) => sum + s.connections, 0));
      clear(holder); holder.append(chart(r.data.samples, holder.clientWidth));
    }
    await load();
    const timer = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
    leavePage.push(() => clearInterval(timer));
  }

  // --- router -----------------------------------------------------------------------------------

  async function render(message) {
    for (const cleanup of leavePage) cleanup();
    leavePage = [];
    clear(root);
    view = document.createElement("div");
    root.append(view);
    if (!token()) { pageSignIn(message); return; }
    nav.hidden = false; signOutButton.hidden = false;
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const page = parts[0] || "overview";
    for (const link of nav.querySelectorAll("a")) {
      const current = link.dataset.page === page || (link.dataset.page === "cas" && page === "ca") || (link.dataset.page === "devices" && page === "device");
      link.classList.toggle("current", current);
      if (current) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
    }
    if (page === "products") await pageProducts();
    else if (page === "cas") await pageCas();
    else if (page === "ca" && parts[1]) await pageCa(parts[1]);
    else if (page === "devices") await pageDevices();
    else if (page === "device" && parts[2]) await pageDevice(parts[1], parts[2]);
    else await pageOverview();
    root.dataset.page = page;
  }

  signOutButton.addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", () => render());
  render();
})();
