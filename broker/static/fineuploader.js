// Fine Uploader S3 5.16.2 (v4 signatures) against the upload broker, with fineuploader-broker.js.
//
// The page holds a session token from its app backend (make run's demo backend, GET demo/session),
// never an API key. FineUploaderBroker.connect reads GET /fineuploader/config; broker.options() fills in
// Fine Uploader's documented S3 options (request, signature, objectProperties.key/bucket as functions,
// uploadSuccess, chunking; the profile is read from the page for each file); broker.attach(uploader)
// lets it read each file's name, type and size.
// The broker refuses anything it did not grant; its reason arrives as {"error": "..."}, which Fine
// Uploader passes to onError, so it is shown next to the file. See docs/FRONTENDS.md.
"use strict";

(function () {
  const BROKER = new URL(".", window.location.href).href.replace(/\/$/, "");
  const $ = (selector) => document.querySelector(selector);
  const results = {};     // file id -> {state, reason, key}, read by tests and the list below
  window.fineUploaderResults = results;
  let session = null;
  let broker = null;
  let uploader = null;

  function profile() { return $("#profile").value; }

  // ------------------------------------------------------------------ the list of files

  function row(id) {
    let li = document.querySelector(`li[data-id="${id}"]`);
    if (!li) {
      li = document.createElement("li");
      li.className = "upload";
      li.dataset.id = String(id);
      li.dataset.state = "asking";
      li.innerHTML = '<div class="row"><span class="name"></span><span class="status"></span></div>' +
                     '<p class="detail"></p>';
      li.querySelector(".name").textContent = uploader.getName(id);
      $("#uploads").prepend(li);
    }
    return li;
  }

  function show(id, { state, status, reason, key }) {
    const li = row(id);
    const result = results[id] || (results[id] = { state: "asking", name: uploader.getName(id) });
    if (key) result.key = key;
    if (reason && !result.reason) result.reason = reason;
    if (state && result.state !== "failed") result.state = state;
    li.dataset.state = result.state;
    li.querySelector(".status").textContent = status || result.state;
    li.querySelector(".detail").textContent = result.state === "failed" ? result.reason || "failed" : result.key || "";
  }

  // ------------------------------------------------------------------ Fine Uploader

  function build() {  // chunking follows the profile's multipart flag: a new uploader per profile
    uploader = broker.attach(new qq.s3.FineUploaderBasic(broker.options({
      autoUpload: true,
      retry: { enableAuto: false },
      callbacks: {
        onSubmitted: (id) => show(id, { status: "asking the broker" }),
        onProgress: (id, name, loaded, total) => {
          if (results[id] && results[id].state !== "failed") {
            show(id, { state: "uploading", status: `${Math.floor((100 * loaded) / Math.max(total, 1))}%` });
          }
        },
        onComplete: (id, name, response) => {
          if (response && response.success) {
            show(id, { state: "done", status: "stored", key: uploader.getKey(id) });
            const li = row(id);
            const grant = broker.grant(id);
            Promise.resolve(grant).then((g) => window.showVerdict(li, li, uploader.getKey(id), { token: session.token },
                                                                  { base: BROKER + "/", grantId: g && g.grantId }));
          }
        },
        onError: (id, name, reason) => {
          if (id !== null && id !== undefined) show(id, { state: "failed", reason: reason || "failed" });
          else $("#notice").textContent = reason, $("#notice").hidden = false;
        },
      },
    })));
    window.fineUploader = uploader;
  }

  async function start() {
    try {
      session = await window.demoSession(BROKER);
      broker = await window.FineUploaderBroker.connect({ endpoint: BROKER, token: session.token, profile });
    } catch (error) {
      $("#notice").textContent = `Cannot start: ${error.message}`;
      $("#notice").hidden = false;
      return;
    }
    $("#session").textContent = `${session.client} · ${session.user || "no user"} · until ${new Date(session.expires_at).toLocaleTimeString()}`;
    const select = $("#profile");
    select.replaceChildren(...broker.config.profiles.map((p) => {
      const option = document.createElement("option");
      option.value = p.name;
      option.textContent = `${p.name}${p.multipart ? " (chunked)" : ""}`;
      return option;
    }));
    select.value = broker.config.defaultProfile || broker.config.profiles[0].name;
    build();
    document.body.dataset.ready = "true";
  }

  $("#profile").addEventListener("change", build);
  $("#files").addEventListener("change", (event) => {
    uploader.addFiles(Array.from(event.target.files));
    event.target.value = "";
  });
  start();
})();
